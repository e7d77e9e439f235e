"""No silent pure-Python fallback: without the C core, importing says how to build it."""

import subprocess
import sys


def test_missing_native_module_says_how_to_build():
    code = (
        "import sys; sys.modules['aurora_log.local._native'] = None\n"
        "try:\n"
        "    import aurora_log.local.log\n"
        "except ImportError as e:\n"
        "    print('IMPORTERROR', e)\n"
        "else:\n"
        "    print('NO ERROR')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60).stdout
    assert "IMPORTERROR" in out
    assert "pip install -e ." in out
