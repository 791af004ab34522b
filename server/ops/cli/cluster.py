"""Shards behind one nginx: `eventq nginx-config` and `eventq cluster`.

`nginx-config` prints the routing configuration of a list of shards
(server.ops.cluster.nginx); `cluster` migrates the database and runs N shards and an
nginx in front of them until SIGTERM or Ctrl-C (server.ops.cluster.supervisor).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from server.ops.cli.serving import cmd_migrate
from server.ops.cli.shared import Commands
from server.ops.config import Settings


def cmd_nginx_config(args: argparse.Namespace, settings: Settings) -> None:
    """`eventq nginx-config`: the routing configuration of a list of shards."""
    from server.ops.cluster.nginx import nginx_site_config, nginx_standalone_config, parse_shard
    from server.ops.config import parse_address

    shards = [parse_shard(spec) for spec in args.shard]
    address = parse_address("--listen", args.listen)
    assert address is not None, "argparse gives --listen a default"
    host, port = address
    if args.standalone is None:
        print(nginx_site_config(shards, host, port), end="")
    else:
        from pathlib import Path

        print(nginx_standalone_config(shards, host, port, Path(args.standalone)), end="")


def cmd_cluster(args: argparse.Namespace, settings: Settings) -> None:
    """`eventq cluster`: migrate, then nginx and N shards until SIGTERM or Ctrl-C."""
    from server.ops.cluster.nginx import find_nginx
    from server.ops.cluster.supervisor import ClusterError, ClusterOptions, cluster_dir, run_cluster
    from server.ops.demo import ensure_demo_realm, print_connection_help

    nginx = args.nginx or find_nginx()
    if nginx is None:
        raise ClusterError("nginx is not installed: apt-get install nginx-light, or pass --nginx")
    options = ClusterOptions(
        shards=args.shards,
        host=args.host,
        port=args.port if args.port is not None else settings.port,
        database_url=settings.database_url,
        nginx=nginx,
        # The cluster's own files (nginx.conf, logs, pids) go under the directory it is
        # run from, as a service's runtime files do; unlike a database, a missing one is
        # made, and a second cluster elsewhere keeps its own.
        var_dir=cluster_dir(Path("var")),
    )
    cmd_migrate(args, settings)
    demo = ensure_demo_realm(settings.database_url) if args.demo else None

    def on_ready() -> None:
        print_connection_help(options.host, options.port, demo)
        shards = ", ".join(f"{s.name} {s.address}" for s in options.shard_addresses())
        print(f"  shards:         {shards}  (processes: {options.var_dir}/cluster.json)")
        print(f"  nginx:          {options.var_dir}/nginx.conf, logs beside it", flush=True)

    run_cluster(options, on_ready)


def add_commands(commands: Commands) -> None:
    """Add `nginx-config` and `cluster`."""
    p = commands.on_settings(
        "nginx-config",
        cmd_nginx_config,
        "Print the nginx configuration that puts shards (`eventq serve --shard NAME`) behind "
        "one address: keep-alive upstreams, register and the REST endpoints to any shard, "
        "each poll to the shard its queue id names (the next shard as backup), polls of "
        "queues of shards no longer listed spread by a consistent hash. The output belongs "
        "in nginx's http {} block (Debian: /etc/nginx/conf.d/eventq.conf); set "
        "EVENTQ_TRUSTED_PROXY=on on the shards. Reload nginx after changing the list: the "
        "queues of a removed shard resume on another, with the same event ids.",
    )
    p.add_argument(
        "--shard",
        action="append",
        required=True,
        metavar="NAME=HOST:PORT",
        help="a shard and where it listens, e.g. shard1=127.0.0.1:9994; repeat for each "
        "shard, in a fixed order (a shard's backup is the next one)",
    )
    p.add_argument(
        "--listen",
        default="0.0.0.0:80",
        metavar="HOST:PORT",
        help="where nginx listens for clients (default: 0.0.0.0:80; add TLS as usual)",
    )
    p.add_argument(
        "--standalone",
        metavar="VAR_DIR",
        help="print a whole nginx.conf instead, running in the foreground with its pid file, "
        "logs and temporary files in VAR_DIR (start it with nginx -c FILE -p VAR_DIR)",
    )
    p = commands.on_settings(
        "cluster",
        cmd_cluster,
        "Run a local cluster until SIGTERM or Ctrl-C: migrate the database, then N shards "
        "(shard1..shardN on the ports after --port) and nginx on --port in front of them, "
        "with the configuration and logs in var/cluster/. A shard that dies is restarted; "
        "if nginx dies everything stops. Works on the SQLite file and on PostgreSQL.",
    )
    p.add_argument("--shards", type=int, default=3, metavar="N", help="how many (default: 3)")
    p.add_argument("--host", default="127.0.0.1", help="where nginx listens (default: 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        help="nginx's port; shard K listens on PORT+K (default: EVENTQ_PORT or 9993)",
    )
    p.add_argument(
        "--nginx",
        metavar="PATH",
        help="the nginx program (default: nginx on PATH, else /usr/sbin/nginx)",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="create a demo realm with users and channels if missing and print a login",
    )
