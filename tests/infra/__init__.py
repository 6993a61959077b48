"""Real test infrastructure: a private Docker engine, locally built images, systemd in a container.

Test modules import the fixtures they use explicitly (a fixture's own fixtures
too: pytest looks them up in the test module), for example::

    from tests.infra.docker_engine import docker_engine, busybox_image, python_containers  # noqa: F401
    from tests.infra.systemd_container import systemd_image, systemd_container  # noqa: F401
    from tests.infra.wheelhouse import wheelhouse  # noqa: F401
    from tests.infra.llamacpp import llama_server, tiny_gguf  # noqa: F401

- ``docker_engine`` (session) -> :class:`~tests.infra.docker_engine.DockerEngine`:
  ``.client`` (a ``docker.DockerClient``), ``.socket_path``, ``.base_url``,
  ``.network`` (its own bridge network), ``.pid`` (of dockerd).
- ``busybox_image`` (session) -> the tag of a tiny busybox image in that engine.
- ``python_containers`` (function) -> ``start(args, container_port=..., image=None,
  name=None, env=None, mounts=None, host_network=False) -> PythonContainer``
  (``.url``, ``.host_port``, ``.host_pid``, ``.container``, ``.wait_http(path)``,
  ``.logs()``): our Python code (``python ARGS``) in a container.
- ``systemd_image`` (session) -> the tag of a Debian 12 image with systemd.
- ``systemd_container`` (function) -> :class:`~tests.infra.systemd_container.SystemdContainer`:
  systemd as PID 1, booted; ``.exec(cmd)``, ``.copy_in(path, dir)``,
  ``.write_file(path, text)``, ``.read_file(path)``, ``.show(unit, *props)``,
  ``.journal(unit)``.
- ``llama_server`` (function) -> :class:`~tests.infra.llamacpp.LlamaServer`: llama.cpp's
  real ``llama-server`` on a tiny random GGUF (``tiny_gguf``, session), on a free port:
  ``.url``, ``.port``, ``.pid``, ``.pause()``/``.resume()`` (SIGSTOP/SIGCONT), ``.kill()``,
  ``.start()``, ``.restart()`` (same port), ``.restart_command`` (argv for
  ``restart.method = "command"``), ``.log_path``. Built beforehand by
  ``scripts/build_llama_server.sh`` (``.ci/run`` does it); ``IW_LLAMA_SERVER`` names
  another binary.
- :class:`~tests.infra.tcp_proxy.TcpProxy` (a class, not a fixture): a TCP proxy on
  127.0.0.1 whose ``hold()`` makes the API behind it silent while the server runs.
- :class:`~tests.infra.http_hold_proxy.HttpHoldProxy` (a class): an HTTP reverse proxy
  whose ``hold()`` leaves only the generation routes unanswered, so ``/health``,
  ``/metrics`` and ``/slots`` keep answering through it (a hung engine behind a live
  HTTP layer).
- ``wheelhouse`` (session) -> a directory of wheels (the package from this tree and
  its dependencies) for ``install.sh --wheelhouse``.

Everything is installed (apt-get) and started by the fixtures themselves; under
``CI=true`` a fixture that cannot start its part fails the test, locally it skips
with the reason. Slow builds are cached under ``/tmp/iw-test-cache`` between runs
on one machine, keyed by their recipe.
"""
