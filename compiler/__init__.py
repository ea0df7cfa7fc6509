"""The compiler: load -> graph -> DAG -> network plan -> render.

Each stage is a module with one job; plain dataclasses travel between them.
"""
