"""Orchestration: run the pipeline's services as supervised background processes.

Above the services in the layer order (schemas <- infra <- producers / stream_app /
consumers <- orchestration <- demo, bench): it starts them by command line and asks their
settings for module names, group ids and ports (service_facts), never the other way
round. It holds

- services: the process table under <run_dir>/services (start, stop, signal, children);
- readiness: the one "start, wait until the groups are ready, show log tails on failure";
- pipeline_cli / pipeline_status: `python -m orchestration pipeline up|down|status`;
- monitor (+ monitoring/): a local Prometheus scraping the services, alert rules;
- api: the read API as a background service.

Generic process supervision (restart with backoff) stays in infra.supervisor, because
stream_app runs its own workers with it and services never import orchestration.
"""
