"""The ``sharkcage`` command line: ``tank``, ``doctor``, ``lint``, ``bench``."""
