"""Create a PostgreSQL database if it does not exist: create_database.py ADMIN_URL NAME."""

import sys

import psycopg

admin_url, name = sys.argv[1], sys.argv[2]
with psycopg.connect(admin_url, autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        conn.execute(f'CREATE DATABASE "{name}"')
