"""`python bench/http.py`: the HTTP shell and read path against a bare Litestar app (bench/http_load.py).

Every bench script runs with bench/ first on its import path, so a file named http.py here hides the
standard library's `http` package from all of them. Imported under that name, this file therefore
loads the real package in its own place; run as a script, it starts the benchmark.
"""

import sys

if __name__ == "http":
    import importlib.machinery
    import importlib.util
    from pathlib import Path

    _here = Path(__file__).resolve().parent
    _spec = importlib.machinery.PathFinder.find_spec("http", [p for p in sys.path if Path(p or ".").resolve() != _here])
    assert _spec is not None and _spec.loader is not None, "the standard library has an http package"
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["http"] = _module  # what `import http` hands back once this file has run
    _spec.loader.exec_module(_module)
elif __name__ == "__main__":
    from http_load import main

    main()
