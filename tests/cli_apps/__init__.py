"""Small apps that tests/test_cli.py points the ``pyncette`` command at."""
