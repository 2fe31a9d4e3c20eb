"""The PostgreSQL behind the Google fakes is laid out as Cloud SQL's is (see conftest)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.pg


def test_the_layout_is_cloud_sql(pg, admin):
    assert pg.execute("SELECT rolname FROM pg_roles WHERE rolsuper") == [("cloudsqladmin",)]   # the only superuser
    assert pg.execute("SELECT rolname FROM pg_roles WHERE oid = 10") == [("cloudsqladmin",)]  # the bootstrap one
    assert pg.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles WHERE rolname = %s",
        (admin.name,)) == [(False, True, True, True)]
    assert pg.execute("""SELECT rolname, rolcanlogin, rolcreaterole, rolcreatedb FROM pg_roles
                         WHERE rolname IN ('cloudsqlsuperuser', 'cloudsqliamserviceaccount', 'cloudsqliamuser')
                         ORDER BY 1""") == [("cloudsqliamserviceaccount", False, False, False),
                                            ("cloudsqliamuser", False, False, False),
                                            ("cloudsqlsuperuser", False, True, True)]
    assert pg.execute("SELECT pg_has_role(%s, 'cloudsqlsuperuser', 'MEMBER')", (admin.name,)) == [(True,)]
