"""A database with users, projects, memberships, issues and comments, and grants on them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio

from electricctl._server.app import Server
from tests.server_fixtures import Env, applied_env, running_server

SCHEMA = """
CREATE TABLE users (id text PRIMARY KEY, name text, email text);
CREATE TABLE projects (id text PRIMARY KEY, owner_id text NOT NULL, name text);
CREATE TABLE memberships (id text PRIMARY KEY, project_id text NOT NULL REFERENCES projects (id),
                          user_id text NOT NULL, active bool NOT NULL DEFAULT true);
CREATE TABLE issues (id text PRIMARY KEY, project_id text NOT NULL REFERENCES projects (id), title text, status text);
CREATE TABLE comments (id text PRIMARY KEY, issue_id text NOT NULL REFERENCES issues (id), body text);
CREATE TABLE admins (user_id text PRIMARY KEY);
INSERT INTO users VALUES ('alice', 'Alice', 'a@x.org'), ('bob', 'Bob', 'b@x.org');
INSERT INTO projects VALUES ('p1', 'carol', 'one'), ('p2', 'carol', 'two');
INSERT INTO memberships VALUES ('m1', 'p1', 'alice', true), ('m2', 'p2', 'bob', true), ('m3', 'p1', 'dave', false);
INSERT INTO issues VALUES ('i1', 'p1', 'first', 'open'), ('i2', 'p2', 'second', 'open'), ('i3', 'p1', 'old', 'archived'),
                          ('i4', 'p1', 'spare', 'open');
INSERT INTO comments VALUES ('c1', 'i1', 'hello');
INSERT INTO admins VALUES ('carol');
"""

CONFIG = """
version: 1
auth:
  mode: secure
  jwt: {alg: HS256, key: test-secret-test-secret-test-secret}
tables: [users, projects, memberships, issues, comments, admins]
adhoc_shapes: allow
assignments:
  - role: "projects:member"
    to: memberships.user_id
    scope: memberships.project_id
    if: "memberships.active"
  - role: admin
    to: admins.user_id
grants:
  - privileges: [select, insert, update, delete]
    on: issues
    to: "projects:member"
    where: "status <> 'archived'"
  - privileges: [select, insert]
    on: comments
    to: "projects:member"
  - privileges: all
    on: projects
    to: admin
  - privileges: [select, insert]
    on: projects
    to: authenticated
    where: "owner_id = auth.sub"
  - privileges: [select, update]
    on: users
    to: authenticated
    columns: [name]
    where: "id = auth.sub"
  - privileges: [select]
    on: users
    to: admin
"""


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Env:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return applied_env(db_url, tmp_path, CONFIG)


@pytest_asyncio.fixture
async def server(env: Env) -> AsyncIterator[Server]:
    async with running_server(env) as srv:
        yield srv
