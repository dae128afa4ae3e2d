"""Tools for development and operations (serving, benchmarks, soak, weights). The runtime
(sdcog/) never imports them."""
