"""``python -m morag_jobs`` is the ``morag-jobs`` command."""

from morag_jobs.cli import main

if __name__ == "__main__":
    main()
