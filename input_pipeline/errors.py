"""``UserError``: input the person running an experiment can correct.

It lives in the lowest layer so that the input pipeline, the experiment configs and the
command line all raise the same class; ``bit-medical`` prints such an error's message alone
(exit status 2) instead of a traceback, which stays for everything else (a bug).
"""


class UserError(ValueError):
    """A bad argument, config value, name or path; the message names the valid choices."""
