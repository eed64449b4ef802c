from django.apps import AppConfig


class SearchConfig(AppConfig):
    name = "search"
    verbose_name = "Search"

    def ready(self):
        from portal.demo import register_demo_hook
        from portal.readiness import register_check, register_worker_startup
        from search import startup
        from django.db.backends.signals import connection_created

        from search.engine import engine_status
        from search.index import configure_connection

        register_check("model", engine_status)
        register_worker_startup(startup.open_configured_engine)
        register_demo_hook(startup.demo_knowledge_base)
        connection_created.connect(configure_connection, dispatch_uid="search.index.configure_connection")
