"""maild's admin command line, installed as the package ``maild.cli``."""

if __name__ != "maild.cli":  # a stray `import cli` from the repo root would shadow nothing useful
    raise ImportError("cli/ is installed as maild.cli; import maild.cli instead of cli")
