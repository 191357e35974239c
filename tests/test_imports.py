"""Importing servicefactory is cheap and has no side effects."""
import subprocess
import sys


def test_import_pulls_in_no_heavy_modules_and_configures_no_logging():
    code = (
        "import logging, sys\n"
        "import servicefactory\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('werkzeug', 'requests', 'psutil', 'click', 'http', 'ssl', 'email'))\n"
        "print(heavy, logging.getLogger().handlers, logging.getLogger('servicefactory').handlers)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] [] []"
