"""
A fork inside a test's transaction, run by Django's test runner
(django_tests.py) and by pytest-django (pytest_tests.py), for
tests/test_testing.py: what the child sees, and the warning in the parent.
Not under shop/, whose tests `manage.py test shop` runs on its own.
"""
