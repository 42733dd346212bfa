"""One configuration over another, for tests on the host and in the VM alike."""

import copy


def deep_merge(base, extra):
    """``base`` with ``extra`` merged in: nested dicts key by key, anything else replaced.
    Neither argument changes; the result shares nothing with them."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
