from tests.pg.conftest import env, su_env  # noqa: F401  (the same realistic environments)
