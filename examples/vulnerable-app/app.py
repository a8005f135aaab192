"""A deliberately vulnerable Flask app: the test target of Sanctum's reference scanner.

Every flaw is planted on purpose and marked with its CWE. Do not deploy this.
"""
import os
import pickle
import sqlite3
import subprocess

import requests
from flask import Flask, request, send_file

app = Flask(__name__)

# CWE-798: hard-coded credential (an obviously fake key, for the scanner to find).
PAYMENT_API_KEY = "FAKE-payments-key-0000-not-a-real-secret"

UPLOAD_DIR = "/srv/uploads"


def db():
    return sqlite3.connect("users.db")


@app.route("/login", methods=["POST"])
def login():
    name = request.form["name"]
    password = request.form["password"]
    # CWE-89: SQL injection, user input formatted into the query.
    query = "SELECT id FROM users WHERE name = '%s' AND password = '%s'" % (name, password)
    row = db().execute(query).fetchone()
    return {"ok": row is not None}


@app.route("/ping")
def ping():
    host = request.args.get("host", "127.0.0.1")
    # CWE-78: OS command injection, the host goes to a shell.
    out = subprocess.check_output("ping -c 1 " + host, shell=True)
    return out


@app.route("/files/<path:name>")
def download(name):
    # CWE-22: path traversal, "../../etc/passwd" leaves UPLOAD_DIR.
    return send_file(os.path.join(UPLOAD_DIR, name))


@app.route("/preview")
def preview():
    url = request.args["url"]
    # CWE-918: server-side request forgery, any URL, internal ones included.
    return requests.get(url, timeout=5).text


@app.route("/session", methods=["POST"])
def restore_session():
    # CWE-502: unsafe deserialisation of attacker-controlled bytes.
    state = pickle.loads(request.get_data())
    return {"restored": len(state)}


@app.route("/charge", methods=["POST"])
def charge():
    headers = {"Authorization": "Bearer " + PAYMENT_API_KEY}
    return requests.post("https://payments.example.com/charge", headers=headers, timeout=5).text


if __name__ == "__main__":
    app.run(debug=True)
