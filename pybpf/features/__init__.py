"""Features built on the object model: trampolines and extensions,
struct_ops, XDP, static linking."""
