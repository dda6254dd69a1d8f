"""What Celery users write today for a cluster-wide limit, to compare cascade-celery with."""
