"""The schedule in the Django admin: ``celery_fork_scheduler.contrib.django``.

Add ``"celery_fork_scheduler.contrib.django"`` to ``INSTALLED_APPS`` (after
``django.contrib.admin``): the admin gets a *Schedule entries* page that lists every entry
(static and runtime) with its next fire and last outcome, shows one entry's next fires and
history, and pauses (with a note), resumes, triggers and removes entries, one by one, selected or
by tag. Everything goes through the :class:`~celery_fork_scheduler.Manager`: the page has no
table of its own (its model is unmanaged, only there for the admin's permissions and log).

Needs the ``django`` extra (``pip install 'celery-fork-scheduler[django]'``); see
``docs/django-admin.md``.
"""
