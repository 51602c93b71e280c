from .run import main

raise SystemExit(main(allow_reexec=True))
