"""`yuneta install` / `yuneta uninstall`: put the agent and certificate layer 1 on a host.

An install is a plan of small, checkable actions (the yuneta user, directories with their
owners and modes, files rendered from the templates shipped in `yuneta/host/`), computed
first and then applied one by one: an action whose target is already right does nothing, so
a second run changes nothing and says so, and `--dry-run` prints the same plan without
touching anything. `--prefix DIR` relocates every absolute path (the files written refer to
each other by their relocated paths), which is how tests and demos run the whole life cycle
in a temporary directory. The yuneta user is always this host's: the relocated scripts,
sudo, runuser and systemd resolve it through the host's user database, so a user that lived
only in DIR/etc/passwd would leave files owned by a number nothing here can name. Not root,
no user is created and the files stay owned by whoever runs it.

`yuneta uninstall` removes what install wrote (the copy script, the deploy hook, the sudoers
drop-in, the unit, the agent's config when unedited) and leaves certificates, keys, the
stamp, logs, the agent's work directory and the user alone.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from yuneta.persist import write_bytes_atomic

USER = "yuneta"
DEFAULT_AGENT_URL = "ws://127.0.0.1:1991"
DEFAULT_METRICS_PORT = 1992
TOOL_TIMEOUT = 60.0
# Values written into the shell templates' defaults ("${VAR-value}") must stay inert there.
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./:@%+=, -]*")


class InstallError(Exception):
    """An install that cannot proceed: names what and why, in one line."""


@dataclass(frozen=True)
class Layout:
    """Every path install knows, under `prefix` ("/" for the real host)."""

    prefix: Path

    def at(self, absolute: str) -> Path:
        return self.prefix / absolute.lstrip("/")

    @property
    def relocated(self) -> bool:
        return self.prefix != Path("/")

    @property
    def certs(self) -> Path:
        return self.at("/yuneta/store/certs")

    @property
    def copy_script(self) -> Path:
        return self.certs / "copy-certs.sh"

    @property
    def deploy_hook(self) -> Path:
        return self.at("/etc/letsencrypt/renewal-hooks/deploy/reload-certs")

    @property
    def sudoers(self) -> Path:
        return self.at("/etc/sudoers.d/90-yuneta")

    @property
    def unit(self) -> Path:
        return self.at("/etc/systemd/system/yuneta-agent.service")

    @property
    def agent_dir(self) -> Path:
        return self.at("/yuneta/agent")

    @property
    def agent_config(self) -> Path:
        return self.agent_dir / "agent.json"

    @property
    def agent_work(self) -> Path:
        return self.agent_dir / "work"

    @property
    def stamp(self) -> Path:
        return self.at("/var/lib/yuneta/last-deploy-hook-run")

    @property
    def hook_log(self) -> Path:
        return self.at("/var/log/yuneta/deploy-hook.log")


@dataclass(frozen=True)
class Owner:
    """Who owns an installed path; uid -1 leaves it to whoever runs install (not root)."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Options:
    layout: Layout
    agent_url: str
    web_reload: str
    user: str  # runs the agent and ycommand, owns the store's copies
    metrics_port: int  # 0: no metrics endpoint
    python: Path
    ycommand: Path


# ---------------------------------------------------------------------------
#   The plan
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dir:
    path: Path
    owner: Owner
    mode: int


@dataclass(frozen=True)
class File:
    path: Path
    content: bytes
    owner: Owner
    mode: int
    check: tuple[str, ...] = ()  # a validator run on the staged file ({} is its path)


def template(name: str) -> str:
    return (resources.files("yuneta") / "host" / name).read_text(encoding="utf-8")


def set_shell_defaults(text: str, defaults: dict[str, str]) -> str:
    """Rewrite `var="${NAME-old}"` (or `:-`) lines of a shell template to default to a value."""
    for name, value in defaults.items():
        if not _SHELL_SAFE.fullmatch(value):
            raise InstallError(f"{name}={value!r}: only letters, digits, blanks and ./:@%+=,_- fit")
        pattern = re.compile(r'^(\w+="\$\{' + name + r":?-)[^}]*(\}\")", re.MULTILINE)

        def with_default(m: re.Match[str], v: str = value) -> str:
            return m.group(1) + v + m.group(2)

        text, count = pattern.subn(with_default, text)
        if count != 1:
            raise InstallError(f"template has {count} default(s) for {name}, expected 1")
    return text


def copy_command(opts: Options) -> str:
    """How the agent's sync runs the copy script: through sudo unless it already runs as root.

    Not root, install makes the caller own everything, so the agent (the same user) runs the
    script directly.
    """
    script = shlex.quote(str(opts.layout.copy_script))
    if os.geteuid() != 0 or opts.user == "root":
        return script
    return f"{shutil.which('sudo') or '/usr/bin/sudo'} -n {script}"


def agent_config(opts: Options) -> dict:
    """configs/agent.json's shape, with this install's values as its variables.

    Variables, so that `yuneta run -f agent.json -f overrides.json` can change one value
    (a later file's `__json_config_variables__` merge over these).
    """
    lay = opts.layout
    variables = {
        "agent_url": opts.agent_url,
        "work_dir": str(lay.agent_work),
        "metrics_enabled": opts.metrics_port != 0,
        "metrics_address": "127.0.0.1",
        "metrics_port": opts.metrics_port or DEFAULT_METRICS_PORT,
        # layer 2, on this install's store, copy script and hook stamp
        "cert_sync_store_dir": str(lay.certs),
        "cert_sync_copy_cmd": copy_command(opts),
        "cert_sync_stamp_file": str(lay.stamp),
        "cert_sync_interval_sec": 900,
        "cert_sync_watch": True,
    }
    agent_kw = {k: f"(^^{k}^^)" for k in variables if k.startswith("cert_sync_")}
    metrics_kw = {"enabled": "(^^metrics_enabled^^)", "address": "(^^metrics_address^^)"}
    return {
        "__json_config_variables__": variables,
        "environment": {
            "work_dir": "(^^work_dir^^)",
            "log_handlers": {"to_stderr": {"handler_type": "stderr"}},
        },
        "yuno": {"yuno_role": "yuneta_agent", "yuno_name": "agent"},
        "services": [
            {
                "name": "agent",
                "gclass": "C_AGENT",
                "as_service": True,
                "default_service": True,
                "kw": agent_kw,
                "children": [
                    {
                        "name": "__input_side__",
                        "gclass": "C_IEVENT_SRV",
                        "kw": {"url": "(^^agent_url^^)"},
                    },
                    {
                        "name": "__metrics__",
                        "gclass": "C_METRICS",
                        "kw": {**metrics_kw, "port": "(^^metrics_port^^)"},
                    },
                ],
            }
        ],
    }


def unit_text(opts: Options) -> str:
    lay = opts.layout
    return template("yuneta-agent.service").format(
        python=opts.python,
        agent_config=lay.agent_config,
        agent_work=lay.agent_work,
        certs=lay.certs,
        user=opts.user,
    )


def sudoers_text(opts: Options) -> str:
    return template("sudoers").format(user=opts.user, copy_script=opts.layout.copy_script)


def plan(opts: Options, yuneta: Owner, root: Owner) -> list[Dir | File]:
    """Everything install puts in place, parents before children."""
    lay = opts.layout
    prefix_value = "" if not lay.relocated else str(lay.prefix)
    owner = opts.user if os.geteuid() == 0 else ""  # not root: copies stay the caller's
    copy_defaults = {
        "YUNETA_PREFIX": prefix_value,
        "YUNETA_CERTS_OWNER": owner,
        "YUNETA_CERTS_GROUP": owner,
    }
    hook_defaults = {
        "YUNETA_PREFIX": prefix_value,
        "YUNETA_YCOMMAND": str(opts.ycommand),
        "YUNETA_AGENT_URL": opts.agent_url,
        "YUNETA_WEB_RELOAD": opts.web_reload,
        "YUNETA_USER": opts.user,
    }
    config = json.dumps(agent_config(opts), indent=4) + "\n"
    visudo = ("visudo", "-cqf", "{}") if shutil.which("visudo") else ()
    verify = ("systemd-analyze", "verify", "{}") if shutil.which("systemd-analyze") else ()
    check_config = (str(opts.python), "-m", "yuneta", "check", "-f", "{}")
    # The directories holding the copy script stay root's: the yuneta user may run that
    # script as root through sudo, so it must not be able to replace it.
    return [
        Dir(lay.at("/yuneta"), root, 0o755),
        Dir(lay.at("/yuneta/store"), root, 0o755),
        Dir(lay.certs, root, 0o755),
        Dir(lay.certs / "private", yuneta, 0o700),
        File(lay.copy_script, _text(template("copy-certs.sh"), copy_defaults), root, 0o755),
        Dir(lay.agent_dir, root, 0o755),
        Dir(lay.agent_work, yuneta, 0o750),
        File(lay.agent_config, config.encode(), root, 0o644, check_config),
        Dir(lay.stamp.parent, root, 0o755),
        Dir(lay.hook_log.parent, root, 0o755),
        Dir(lay.deploy_hook.parent, root, 0o755),
        File(lay.deploy_hook, _text(template("deploy-hook.sh"), hook_defaults), root, 0o755),
        Dir(lay.sudoers.parent, root, 0o755),
        File(lay.sudoers, sudoers_text(opts).encode(), root, 0o440, visudo),
        Dir(lay.unit.parent, root, 0o755),
        File(lay.unit, unit_text(opts).encode(), root, 0o644, verify),
    ]


def _text(template_text: str, defaults: dict[str, str]) -> bytes:
    return set_shell_defaults(template_text, defaults).encode()


# ---------------------------------------------------------------------------
#   Applying it
# ---------------------------------------------------------------------------


def _owner_ok(st: os.stat_result, owner: Owner) -> bool:
    return owner.uid < 0 or (st.st_uid, st.st_gid) == (owner.uid, owner.gid)


def _describe(owner: Owner, mode: int) -> str:
    return f"{owner.name} {mode:04o}"


def apply_dir(d: Dir, dry_run: bool) -> str | None:
    """Make the directory right; what was done, or None when it already was."""
    try:
        st = d.path.lstat()
    except FileNotFoundError:
        if not dry_run:
            d.path.mkdir(mode=d.mode, parents=True)
            _set_owner_mode(d.path, d.owner, d.mode)
        return f"create dir  {d.path} ({_describe(d.owner, d.mode)})"
    if not d.path.is_dir() or d.path.is_symlink():
        raise InstallError(f"{d.path}: exists and is not a directory; move it away first")
    if (st.st_mode & 0o7777) == d.mode and _owner_ok(st, d.owner):
        return None
    if not dry_run:
        _set_owner_mode(d.path, d.owner, d.mode)
    return f"fix dir     {d.path} ({_describe(d.owner, d.mode)})"


def apply_file(f: File, dry_run: bool) -> str | None:
    """Make the file right (content first, then owner and mode); what was done, or None."""
    try:
        st = f.path.lstat()
        current = f.path.read_bytes() if f.path.is_file() and not f.path.is_symlink() else None
    except FileNotFoundError:
        st, current = None, None
    if current == f.content and st is not None:
        if (st.st_mode & 0o7777) == f.mode and _owner_ok(st, f.owner):
            return None
        if not dry_run:
            _set_owner_mode(f.path, f.owner, f.mode)
        return f"fix file    {f.path} ({_describe(f.owner, f.mode)})"
    verb = "write file " if st is None else "update file"
    if not dry_run:
        write_bytes_atomic(f.path, f.content, f.mode)
        _set_owner_mode(f.path, f.owner, f.mode)
    return f"{verb} {f.path} ({_describe(f.owner, f.mode)})"


def check_files(items: list[Dir | File]) -> None:
    """Run every validator on what would be written, before anything is changed: a bad
    file (an --agent-url the agent refuses) must not leave half an install behind."""
    for f in items:
        if isinstance(f, File) and f.check:
            try:
                unchanged = f.path.is_file() and f.path.read_bytes() == f.content
            except OSError:
                unchanged = False
            if not unchanged:
                _check_staged(f)


def _check_staged(f: File) -> None:
    """Run the file's validator on a private copy, so a bad file never lands in its place.

    The copy keeps the file's name (systemd-analyze reads the unit's type from it) in a
    private directory (the target's may not exist yet).
    """
    with tempfile.TemporaryDirectory(prefix=f"yuneta-install-{f.path.name}.") as tmp:
        staged = Path(tmp) / f.path.name
        write_bytes_atomic(staged, f.content, 0o400)
        argv = [staged.as_posix() if a == "{}" else a for a in f.check]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().replace("\n", "; ")
        raise InstallError(f"{f.path}: {f.check[0]} refuses it: {why}")


def _set_owner_mode(path: Path, owner: Owner, mode: int) -> None:
    if owner.uid >= 0:
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
    os.chmod(path, mode)


def ensure_user(user: str, dry_run: bool) -> tuple[Owner, str | None]:
    """The agent's user and group (created when missing, as root); what was done, or None."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name
        return Owner(me, -1, -1), (
            f"skip user   {user}: not root, so no user is created and files stay owned by {me}"
        )
    try:
        entry = pwd.getpwnam(user)
        return Owner(user, entry.pw_uid, entry.pw_gid), None
    except KeyError:
        pass
    action = f"create user {user} (system user and group, home /yuneta, no login shell)"
    if dry_run:
        return Owner(user, -1, -1), action
    argv = [
        "useradd",
        "--system",
        "--user-group",
        "--home-dir",
        "/yuneta",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        user,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    if proc.returncode != 0:
        raise InstallError(f"useradd {user} failed: {proc.stderr.strip()}")
    entry = pwd.getpwnam(user)
    return Owner(user, entry.pw_uid, entry.pw_gid), action


def root_owner() -> Owner:
    if os.geteuid() != 0:
        return Owner(pwd.getpwuid(os.geteuid()).pw_name, -1, -1)
    return Owner("root", 0, grp.getgrnam("root").gr_gid)


def install(opts: Options, dry_run: bool, out=print) -> int:
    """Apply the plan; print every action ("would ..." in a dry run). Returns an exit code."""
    check_files(plan(opts, Owner(opts.user, -1, -1), root_owner()))
    yuneta, user_action = ensure_user(opts.user, dry_run)
    actions = [user_action] if user_action else []
    for item in plan(opts, yuneta, root_owner()):
        done = apply_dir(item, dry_run) if isinstance(item, Dir) else apply_file(item, dry_run)
        if done:
            actions.append(done)
    changes = [a for a in actions if not a.startswith("skip")]
    for a in actions:
        out(("would " if dry_run and not a.startswith("skip") else "") + a)
    if not changes:
        out(f"nothing to do: {opts.layout.prefix} already has this install")
    else:
        out(f"{'would change' if dry_run else 'changed'} {len(changes)} item(s)")
    for warning in _warnings(opts):
        out(f"warning: {warning}")
    if not dry_run and changes:
        out(_next_steps(opts))
    return 0


def uninstall(opts: Options, dry_run: bool, out=print) -> int:
    """Remove the files install wrote (an edited agent config is kept and named)."""
    lay = opts.layout
    yuneta, root = Owner(opts.user, -1, -1), root_owner()
    generated = {
        item.path: item.content for item in plan(opts, yuneta, root) if isinstance(item, File)
    }
    removed = 0
    for path in (lay.copy_script, lay.deploy_hook, lay.sudoers, lay.unit, lay.agent_config):
        if not path.exists() and not path.is_symlink():
            continue
        if path == lay.agent_config and path.read_bytes() != generated[path]:
            out(f"keep   {path}: edited since install; remove it by hand if unwanted")
            continue
        if not dry_run:
            path.unlink()
        removed += 1
        out(f"{'would ' if dry_run else ''}remove {path}")
    if removed == 0:
        out(f"nothing to do: no install files under {lay.prefix}")
    out(
        f"left alone: certificates and keys in {lay.certs}, {lay.stamp}, {lay.hook_log}, "
        f"{lay.agent_work}, the {opts.user} user"
    )
    return 0


def _warnings(opts: Options) -> list[str]:
    """What would stop the agent from running as the yuneta user under this unit."""
    python = opts.python.resolve()
    for parent in reversed(python.parents):
        try:
            mode = parent.stat().st_mode
        except OSError:
            break
        if not mode & 0o001:
            return [
                f"{opts.python} runs {python}, under {parent} (mode {mode & 0o777:04o}): the "
                f"{opts.user} user cannot run it; install where every user can (e.g. a venv in /opt)"
            ]
    if python.is_relative_to("/home") or python.is_relative_to("/root"):
        return [f"{python} is under a home directory, which the unit's ProtectHome=yes hides"]
    return []


def _next_steps(opts: Options) -> str:
    lay = opts.layout
    if lay.relocated:
        return (
            f"next: yuneta run -f {lay.agent_config} starts the agent; certbot --config-dir "
            f"{lay.at('/etc/letsencrypt')} ... --deploy-hook {lay.deploy_hook}"
        )
    return (
        "next: systemctl daemon-reload && systemctl enable --now yuneta-agent; then "
        f"certbot certonly ... --deploy-hook {lay.deploy_hook} (renewals run it from "
        f"{lay.deploy_hook.parent})"
    )


# ---------------------------------------------------------------------------
#   Command line
# ---------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix", default="/", help="root of every installed path (default /)")
    p.add_argument("--dry-run", action="store_true", help="print every action, change nothing")
    p.add_argument(
        "--agent-url",
        default=DEFAULT_AGENT_URL,
        help=f"the agent's control URL, for its config and the hook (default {DEFAULT_AGENT_URL})",
    )
    p.add_argument(
        "--user",
        default=USER,
        help=f"runs the agent and owns the store's copies; created when missing (default {USER})",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help=f"the agent's /metrics port on 127.0.0.1, 0 for none (default {DEFAULT_METRICS_PORT})",
    )
    p.add_argument(
        "--web-reload",
        default="",
        metavar="COMMAND",
        help="web server reload the deploy hook runs, e.g. 'nginx -s reload' (default none)",
    )


def options_from(args: argparse.Namespace) -> Options:
    prefix = Path(args.prefix)
    if not prefix.is_absolute():
        raise InstallError(f"--prefix {args.prefix}: must be an absolute path")
    python = Path(sys.executable)
    scripts = Path(sysconfig.get_path("scripts"))
    ycommand = scripts / "ycommand"
    if not ycommand.exists():
        found = shutil.which("ycommand")
        if found is None:
            raise InstallError("ycommand: not found beside this Python nor on PATH; pip install")
        ycommand = Path(found)
    if not re.fullmatch(r"[a-z_][a-z0-9_-]*", args.user):
        raise InstallError(f"--user {args.user!r}: not a valid user name")
    if not 0 <= args.metrics_port <= 65535:
        raise InstallError(f"--metrics-port {args.metrics_port}: not a port number")
    return Options(
        Layout(prefix),
        args.agent_url,
        args.web_reload,
        args.user,
        args.metrics_port,
        python,
        ycommand,
    )


def main(verb: str, args: argparse.Namespace) -> int:
    try:
        opts = options_from(args)
        if verb == "install":
            return install(opts, args.dry_run)
        return uninstall(opts, args.dry_run)
    except InstallError as exc:
        print(f"yuneta {verb}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"yuneta {verb}: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
