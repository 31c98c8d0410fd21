"""The object model: Object, Program, Map, Link, Btf."""
