"""Real test infrastructure: a private Docker engine, locally built images, systemd in a container.

Test modules import the fixtures they use explicitly, for example::

    from tests.infra.docker_engine import docker_engine, busybox_image  # noqa: F401
    from tests.infra.systemd_container import systemd_image, systemd_container  # noqa: F401

Everything is installed (apt-get) and started by the fixtures themselves; under
``CI=true`` a fixture that cannot start its part fails the test, locally it skips
with the reason. Slow builds are cached under ``/tmp/iw-test-cache`` between runs
on one machine, keyed by their recipe.
"""
