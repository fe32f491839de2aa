"""Public command, internal modules: the web page and JSON API that name the characters in pictures (`python -m animesion_jax.serve`).

Needs the `demo` extra: pip install -e '.[demo]'.
"""
