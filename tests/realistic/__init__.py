"""Hand-written NumPy backprop in the styles people really write it: course layer files with
caches, naive loops that assign into arrays, class-based networks.

Plain NumPy, no jaxcheck imports: these are systems under test for the port and for checks.
"""
