//! Sanctum's images (filled in below).
