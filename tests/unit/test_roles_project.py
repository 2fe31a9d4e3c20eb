"""`roles:` in runbook.yaml: the map, its refusals, and the shorthand's unchanged digests."""

from __future__ import annotations

import pytest

from runbook import project
from runbook.errors import ConfigError

# Two shorthand files and their digests as `main` computed them before `roles:` existed: an old
# project keeps its soaks only if these never move.
MINIMAL = """
version: 1
app: raptor
role:
  name: raptor_app
flag:
  name: FLAG_RAPTOR
environments:
  staging: {provider: local, database: {dsn_env: X}}
"""
FULL = """
version: 1
app: raptor
role:
  name: raptor_app
  owner: app_owner
  schemas:
    public: {tables: [SELECT, INSERT, UPDATE, DELETE], sequences: [USAGE, SELECT], functions: [EXECUTE]}
    billing: {tables: [SELECT]}
  deny: [alembic_version, billing.invoices]
  connection_limit: 20
  rls: bypass
  creators: [migrator]
  deny_presets: []
config: {url_var: RAPTOR_APP_DATABASE_URL}
flag: {name: FLAG_RAPTOR_APP_ROLE_SEPARATION, on_value: "true", off_value: "false"}
environments:
  staging: {provider: local, database: {dsn_env: X}}
"""
DIGESTS_ON_MAIN = {"minimal": "bb6535939f3122db", "full": "1a33fb1a9b3828e1"}

THREE = """
version: 1
app: raptor
roles:
  raptor_app:
    owner: app_owner
    url_var: APP_DATABASE_URL
    flag: {name: FLAG_ROLE_SEPARATION}
  raptor_readonly:
    owner: app_owner
    url_var: READONLY_DATABASE_URL
    schemas:
      public: {tables: [SELECT], sequences: [SELECT]}
  raptor_migrator:
    owner: app_owner
    url_var: MIGRATOR_DATABASE_URL
    schemas:
      public: {tables: [SELECT]}
    deny_presets: []
    deny: []
    member_of: [app_owner]
environments:
  staging: {provider: local, database: {dsn_env: X}}
"""


def test_old_shorthand_files_keep_their_digests_byte_for_byte():
    for name, text in (("minimal", MINIMAL), ("full", FULL)):
        p = project.loads(text)
        assert p.role.digest() == DIGESTS_ON_MAIN[name]
        (only,) = p.roles.values()
        assert only.shorthand and only.digest() == DIGESTS_ON_MAIN[name]
        assert not p.several


def test_the_shorthand_normalizes_to_the_map_shape():
    p = project.loads(FULL)
    (managed,) = p.roles.values()
    assert managed.name == "raptor_app"
    assert managed.url_var == "RAPTOR_APP_DATABASE_URL"
    assert managed.flag is not None and managed.flag.name == "FLAG_RAPTOR_APP_ROLE_SEPARATION"
    assert managed.member_of == ()


def test_a_role_moved_from_the_shorthand_into_the_map_keeps_its_digest():
    moved = """
version: 1
app: raptor
roles:
  raptor_app:
    owner: app_owner
    schemas:
      public: {tables: [SELECT, INSERT, UPDATE, DELETE], sequences: [USAGE, SELECT], functions: [EXECUTE]}
      billing: {tables: [SELECT]}
    deny: [alembic_version, billing.invoices]
    connection_limit: 20
    rls: bypass
    creators: [migrator]
    deny_presets: []
    url_var: SOMEWHERE_ELSE_URL
    flag: {name: OTHER_FLAG}
environments:
  staging: {provider: local, database: {dsn_env: X}}
"""
    assert project.loads(moved).roles["raptor_app"].digest() == DIGESTS_ON_MAIN["full"]


def test_three_roles_parse_with_their_own_urls_flags_and_memberships():
    p = project.loads(THREE)
    assert p.several
    assert list(p.roles) == ["raptor_app", "raptor_readonly", "raptor_migrator"]
    app, ro, mig = p.roles.values()
    assert app.flag is not None and ro.flag is None and mig.flag is None
    assert (app.url_var, ro.url_var, mig.url_var) == ("APP_DATABASE_URL", "READONLY_DATABASE_URL",
                                                      "MIGRATOR_DATABASE_URL")
    assert mig.member_of == ("app_owner",)
    assert ro.spec.schemas["public"].tables == ["SELECT"]
    assert len({app.digest(), ro.digest(), mig.digest()}) == 3
    assert p.role.name == "raptor_app"      # the first role, for code that asks for one


def test_changing_one_role_changes_only_its_digest():
    a = project.loads(THREE)
    b = project.loads(THREE.replace("public: {tables: [SELECT], sequences: [SELECT]}",
                                    "public: {tables: [SELECT, INSERT], sequences: [SELECT]}"))
    assert a.roles["raptor_readonly"].digest() != b.roles["raptor_readonly"].digest()
    assert a.roles["raptor_app"].digest() == b.roles["raptor_app"].digest()
    assert a.roles["raptor_migrator"].digest() == b.roles["raptor_migrator"].digest()
    # where the URL lives is not what the role may do; member_of is
    c = project.loads(THREE.replace("MIGRATOR_DATABASE_URL", "MIGRATIONS_URL"))
    assert c.roles["raptor_migrator"].digest() == a.roles["raptor_migrator"].digest()
    d = project.loads(THREE.replace("member_of: [app_owner]", "member_of: []"))
    assert d.roles["raptor_migrator"].digest() != a.roles["raptor_migrator"].digest()


def test_select_names_one_role_or_every_role_and_suggests_a_near_name():
    p = project.loads(THREE)
    assert [m.name for m in p.select(None)] == list(p.roles)
    assert [m.name for m in p.select("raptor_readonly")] == ["raptor_readonly"]
    with pytest.raises(ConfigError, match=r"no role 'raptor_readonyl'.*did you mean 'raptor_readonly'"):
        p.select("raptor_readonyl")


def test_a_catalog_only_role_is_a_role_with_no_table_privileges():
    ci = THREE + ""
    text = ci.replace("environments:", """  raptor_ci:
    url_var: CI_DATABASE_URL
    schemas:
      public: {}
    deny_presets: []
    deny: []
environments:""", 1)
    p = project.loads(text)
    grants = p.roles["raptor_ci"].spec.schemas["public"]
    assert (grants.tables, grants.sequences, grants.functions) == ([], [], [])


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace("environments:", "role: {name: other_app}\nflag: {name: F}\nenvironments:", 1),
     "role: and roles: together"),
    (lambda t: t.replace("READONLY_DATABASE_URL", "APP_DATABASE_URL"), "url_var APP_DATABASE_URL is also raptor_app's"),
    (lambda t: t.replace("member_of: [app_owner]", "member_of: [postgres]"), "superuser or platform admin"),
    (lambda t: t.replace("member_of: [app_owner]", "member_of: [rds_superuser]"), "superuser or platform admin"),
    (lambda t: t.replace("member_of: [app_owner]", "member_of: [raptor_app]"), "a managed role of this project"),
    (lambda t: t.replace("  raptor_readonly:\n", "  postgres:\n"), "reserved"),
    (lambda t: t.replace("  raptor_readonly:\n", "  app_owner:\n"), "'app_owner' is the owner"),
    (lambda t: t.replace("  raptor_readonly:\n    owner: app_owner", "  app_owner:\n    owner: other_owner"),
     "owner 'app_owner' is a managed role"),
    (lambda t: t.replace("  raptor_readonly:\n    owner", "  raptor_readonly:\n    name: x\n    owner"),
     "the key is the role's name"),
    (lambda t: t.replace("environments:", "flag: {name: F}\nenvironments:", 1), "flag: is for the one-role"),
    (lambda t: t.replace("environments:", "config: {url_var: X_URL}\nenvironments:", 1), "config: is for the one-role"),
    (lambda t: t.replace("    url_var: READONLY_DATABASE_URL\n", ""), "url_var is required"),
    (lambda t: t.replace("flag: {name: FLAG_ROLE_SEPARATION}", "flag: {name: READONLY_DATABASE_URL}"),
     "is also raptor_app's flag"),
    (lambda t: t.replace("url_var: READONLY_DATABASE_URL", "url_var: READONLY_DATABASE_URL\n    bogus: 1"),
     "unknown key 'roles.raptor_readonly.bogus'"),
])
def test_hostile_or_mistaken_maps_are_refused_in_one_line(change, message):
    with pytest.raises(ConfigError) as exc:
        project.loads(change(THREE))
    assert message in exc.value.message
    assert "\n" not in exc.value.message
    assert "runbook.yaml:" in exc.value.message


def test_neither_role_nor_roles_is_an_error():
    text = MINIMAL.replace("role:\n  name: raptor_app\n", "").replace("flag:\n  name: FLAG_RAPTOR\n", "")
    with pytest.raises(ConfigError, match="role is required"):
        project.loads(text)


def test_the_shorthand_still_needs_its_flag():
    with pytest.raises(ConfigError, match="flag is required"):
        project.loads(MINIMAL.replace("flag:\n  name: FLAG_RAPTOR\n", ""))


def test_the_json_schema_has_roles_with_every_role_key():
    schema = project.json_schema()
    assert "roles" in schema["properties"]
    entry = schema["$defs"]["RoleEntry"]["properties"]
    for key in ("schemas", "deny", "deny_presets", "connection_limit", "owner", "creators", "rls", "adopt",
                "url_var", "flag", "member_of"):
        assert key in entry, key
    # every RoleSpec field arrives on the entry (a field added to RoleSpec later arrives too)
    assert set(project.RoleSpec.model_fields) <= set(project.RoleEntry.model_fields)


MIXED = """
version: 1
app: raptor
roles:
  raptor_readonly:
    url_var: READONLY_DATABASE_URL
    schemas:
      public: {tables: [SELECT]}
  raptor_app:
    url_var: APP_DATABASE_URL
    rotation: alternating
    flag: {name: FLAG_ROLE_SEPARATION}
environments:
  staging: {provider: local, database: {dsn_env: X}}
"""


def test_an_alternating_role_after_a_single_one_keeps_the_drain_step():
    from runbook import playbook

    loaded = project.loads(MIXED)
    for name in ("provision", "rotate"):
        assert "drain" in [s.kind for s in playbook.load(name, loaded).steps]


def test_a_role_named_like_another_roles_login_is_refused():
    text = MIXED.replace("  raptor_readonly:\n", "  raptor_app_b:\n")
    with pytest.raises(ConfigError) as err:
        project.loads(text)
    assert "raptor_app_b is another role of this project" in err.value.message
    assert "\n" not in err.value.message
