// Client-side part of the deliberately vulnerable app. Do not deploy this.

function showGreeting() {
  const params = new URLSearchParams(window.location.search);
  // CWE-79: DOM-based cross-site scripting, the query string becomes HTML.
  document.getElementById("greeting").innerHTML = "Hello, " + params.get("name");
}

function loadAvatar(userId) {
  // CWE-601: open redirect, "next" is followed wherever it points.
  const next = new URLSearchParams(window.location.search).get("next");
  fetch("/avatar/" + userId).then(() => { window.location = next; });
}

document.addEventListener("DOMContentLoaded", showGreeting);
