"""Measurements of the whole app, run from a checkout (the library's own figures are ``python -m canon bench``)."""
