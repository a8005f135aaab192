//! Harness for the end-to-end suite.
