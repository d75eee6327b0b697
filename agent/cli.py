"""The `callstream` command line (DESIGN.md "Command line")."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import socket
import sys
from pathlib import Path

from agent.archive_cli import add_archive_commands
from agent.bench.commands import add_bench_commands
from agent.settings import ConfigError, Settings, check_serving, load_settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False


def _settings(args: argparse.Namespace) -> Settings:
    environ = None
    if getattr(args, "fakes", False):
        # the local fakes take throwaway credentials: none need be set
        environ = {"DEEPGRAM_API_KEY": "replay-fake", "AWS_REGION": "us-east-1", **os.environ}
    settings = load_settings(environ)
    if getattr(args, "flow", None):
        if not Path(args.flow).is_file():
            raise ConfigError(f"--flow {args.flow!r}: no such file")
        settings = settings.with_overrides(flow_path=args.flow)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from agent.app import create_app
    from agent.flow import FlowError
    from agent.flow_loader import load_flow
    from agent.logs import configure_logging
    from agent.media_lane import MediaWebSocketProtocol
    from agent.shutdown import GracefulServer

    settings = _settings(args)
    check_serving(settings)
    configure_logging(settings.log_level, json_lines=args.json_logs)
    if not settings.twilio_auth_token and not _is_loopback(args.host) and not args.insecure:
        print(
            f"refusing to serve on {args.host} without TWILIO_AUTH_TOKEN: anyone could drive calls. "
            "Set TWILIO_AUTH_TOKEN (signatures are then checked) or pass --insecure.",
            file=sys.stderr,
        )
        return 2
    try:
        load_flow(settings.flow_path)  # fail before binding, with file and line
    except FlowError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    if settings.redis_url:  # fail before binding, naming REDIS_URL (bounded connect timeout)
        from agent.redis_conn import check_reachable

        check_reachable(settings.redis_url)
    from agent.wiring import check_credentials

    asyncio.run(check_credentials(settings))  # a refused key stops us here, naming it
    base_url = settings.base_url_for(args.host, args.port)
    app = create_app(settings, base_url)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ws=MediaWebSocketProtocol,  # uvicorn's websockets-sansio plus the media lane
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    # the first SIGTERM drains (readyz 503, calls finish up to CALLSTREAM_DRAIN_S), a second stops now
    GracefulServer(config, app.state.drain).run()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from agent.fixtures import FixtureError, find_fixtures
    from agent.logs import configure_logging
    from agent.replay import replay, report_json, report_text

    settings = _settings(args)
    configure_logging("WARNING" if not args.verbose else "INFO")
    try:
        fixtures = find_fixtures(args.fixtures)
    except FixtureError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.fakes and args.url:
        print("--fakes serves the speech providers of the in-process server: not with --url", file=sys.stderr)
        return 2
    archive = args.archive or (str(Path(args.out) / "archive") if args.out else None)
    speed = None if args.speed == "max" else float(args.speed)
    if speed is not None and speed <= 0:
        print("--speed must be positive or 'max'", file=sys.stderr)
        return 2
    results = asyncio.run(
        replay(
            fixtures,
            settings,
            url=args.url,
            speed=speed,
            out_dir=Path(args.out) if args.out else None,
            parallel=args.parallel,
            rest_port=args.rest_port,
            fakes=args.fakes,
            archive=archive if args.url is None else None,
        )
    )
    print(report_json(results) if args.json else report_text(results, speed))
    if args.out:
        print(f"stereo recordings (caller left, agent right) in {args.out}", file=sys.stderr)
    if archive and args.url is None:
        from agent.archive_cli import archived_calls

        stored = archived_calls(Path(archive), [r.call_sid for r in results])
        print(f"archive: {len(stored)}/{len(results)} calls stored in {archive}", file=sys.stderr)
    return 0 if all(r.passed for r in results) else 1


def cmd_call(args: argparse.Namespace) -> int:
    from agent.outbound import call_command

    return call_command(_settings(args), args.to, args.from_)


def cmd_flow_check(args: argparse.Namespace) -> int:
    from agent.flow_loader import flow_check_command

    return flow_check_command(args.file)


def cmd_tail(args: argparse.Namespace) -> int:
    from agent.tail import ops_token_from_env, tail

    token = ops_token_from_env()
    if not token:
        print("callstream tail needs CALLSTREAM_OPS_TOKEN (the server's ops token) in the environment or .env",
              file=sys.stderr)
        return 2
    color = sys.stdout.isatty() and not args.no_color
    return asyncio.run(tail(args.url, token, args.call, color=color))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callstream", description="Real-time voice agent for Twilio calls.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (webhooks, media socket, ops feed)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--flow", help="dialog flow YAML (default: CALLSTREAM_FLOW or the acme flow)")
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without TWILIO_AUTH_TOKEN")
    serve.add_argument("--json-logs", action="store_true", help="one JSON object per log line")
    serve.set_defaults(func=cmd_serve)

    rep = sub.add_parser("replay", help="play fixture calls through the server as Twilio would")
    rep.add_argument("fixtures", nargs="+", help="fixture YAML files or directories of them")
    rep.add_argument("--url", help="Media Streams URL of a running server (default: start one in-process)")
    rep.add_argument("--speed", default="max", help="1 = real time, N = N times faster, max = lockstep (default)")
    rep.add_argument("--flow", help="flow for the in-process server")
    rep.add_argument("--json", action="store_true", help="machine-readable report")
    rep.add_argument("--out", help="write a stereo WAV per call here (caller left, agent right)")
    rep.add_argument("--parallel", type=int, default=2, help="calls replayed at once (default 2)")
    rep.add_argument("--archive", help="archive folder for the in-process server (default: OUT/archive with --out)")
    rep.add_argument("--rest-port", type=int, default=0, help="port for the fake Twilio REST API (with --url)")
    rep.add_argument(
        "--fakes", action="store_true",
        help="serve CALLSTREAM_STT=deepgram / CALLSTREAM_TTS=polly from local fakes of their APIs",
    )
    rep.add_argument("-v", "--verbose", action="store_true", help="show the server's log")
    rep.set_defaults(func=cmd_replay)

    call = sub.add_parser("call", help="place an outbound call through Twilio REST")
    call.add_argument("to", metavar="TO", help="E.164 number (+14155550100) or sip: URI")
    call.add_argument("--from", dest="from_", metavar="NUMBER", help="caller ID (default: TWILIO_FROM_NUMBER)")
    call.set_defaults(func=cmd_call)

    tail = sub.add_parser("tail", help="follow the live feed of a running server (CALLSTREAM_OPS_TOKEN)")
    tail.add_argument("--call", metavar="CALL_SID", help="only this call")
    tail.add_argument("--url", default="http://127.0.0.1:8080", help="the server's base URL (default %(default)s)")
    tail.add_argument("--no-color", action="store_true", help="plain text even on a terminal")
    tail.set_defaults(func=cmd_tail)
    add_archive_commands(sub)
    add_bench_commands(sub)

    flow = sub.add_parser("flow", help="dialog flow tools")
    flow_sub = flow.add_subparsers(dest="flow_command", required=True)
    check = flow_sub.add_parser("check", help="validate a flow: problems with file and line")
    check.add_argument("file")
    check.set_defaults(func=cmd_flow_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
