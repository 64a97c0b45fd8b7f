"""``python -m prunekit``: the same application as the ``prunekit`` command (:func:`prunekit.cli.main`)."""

from prunekit.cli import main

if __name__ == "__main__":
    main()
