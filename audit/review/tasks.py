"""Background tasks of the compliance side, run by ``manage.py db_worker``
(django-tasks' database backend, like the file imports in search/tasks.py).
An export needs no model: the worker opens none for it."""
from django_tasks import task


@task()
def run_audit_export(job_id: int) -> None:
    """Write the bundle of one queued ExportJob (audit.review.exports.export_job_run)."""
    from audit.review.exports import export_job_run

    export_job_run(job_id)
