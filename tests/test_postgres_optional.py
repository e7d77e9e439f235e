"""The PostgreSQL backend is optional: a local store never imports psycopg."""

import subprocess
import sys
import textwrap


def test_a_local_store_never_imports_psycopg(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import aurora_log
        q = aurora_log.open({str(tmp_path / "store")!r}, reaper_interval=None)
        q.enqueue(aurora_log.Job("t"))
        j = q.claim("w")
        q.complete(j.id, j.token)
        q.close()
        from aurora_log import interface  # noqa: F401
        from aurora_log.runtime import tasks, worker  # noqa: F401
        from aurora_log.tools import cli  # noqa: F401
        bad = sorted(m for m in sys.modules if m.startswith(("psycopg", "aurora_log.postgres")))
        assert not bad, bad
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
