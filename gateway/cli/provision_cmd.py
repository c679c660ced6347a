"""``flgate provision ...`` (kits from a project file) and ``flgate kit verify``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from ..core.exceptions import ConfigError
from ..core.identity import AdminRole
from ..observability.endpoint import SITE_DEFAULT
from ..provisioning.kit import KitError, load_kit
from ..provisioning.project import Project
from ..provisioning.revocation import REASONS, parse_crl
from ..provisioning.workspace import Outcome, ProvisioningWorkspace
from .common import EXIT_CONFIG, EXIT_OK
from .table import format_table


class _DefaultAction(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands in which a first word that names none means ``init WORD``.

    So ``flgate provision project.yml -o WS`` is ``flgate provision init project.yml -o WS``.
    """

    class _Anything(dict[str, Any]):
        def __contains__(self, key: object) -> bool:
            return True

    def seal(self) -> None:
        """Accept any first word from now on (call after the last ``add_parser``)."""
        self.choices = self._Anything(self._name_parser_map)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        words = list(values or [])
        if words and words[0] not in self._name_parser_map:
            words.insert(0, "init")
        super().__call__(parser, namespace, words, option_string)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    provision = commands.add_parser(
        "provision",
        help="create startup kits for a federation from project.yml; add, revoke",
        description="Create the federation's root CA and a startup kit per participant "
        "(`flgate provision PROJECT_YML -o WORKSPACE`), add sites and admins later from the "
        "same CA, revoke a participant. Kits already handed out stay valid.",
    )
    sub = provision.add_subparsers(
        dest="action", metavar="PROJECT_YML | ACTION", required=True, action=_DefaultAction
    )
    assert isinstance(sub, _DefaultAction)

    init = sub.add_parser(
        "init",
        help="(the default) kits for every participant of PROJECT_YML that has none yet",
        description="Create WORKSPACE with a new root CA and a kit per participant, or, for an "
        "existing WORKSPACE, reuse its CA and add kits only for new participants.",
    )
    init.add_argument("project", type=Path, metavar="PROJECT_YML")
    init.add_argument(
        "-o", "--output", type=Path, required=True, metavar="WORKSPACE", help="workspace dir"
    )
    init.set_defaults(func=_init)

    def workspace_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "-w",
            "--workspace",
            type=Path,
            required=True,
            metavar="WORKSPACE",
            help="the provisioning workspace (made by `flgate provision PROJECT_YML -o ...`)",
        )

    add_site = sub.add_parser(
        "add-site",
        help="issue a kit for a new site from the same CA",
        description="Issue a kit for a new site from the same CA; other kits stay valid. A "
        "site --via an edge relay dials that edge: the relay's and the edge's config.yaml then "
        "list it, so their kits are signed again (same certificates and keys) and must be "
        "copied to where they run. New edge relays: add them to the project file and run "
        "`flgate provision PROJECT_YML -o WORKSPACE` again.",
    )
    add_site.add_argument("name", metavar="NAME")
    add_site.add_argument(
        "--via",
        metavar="EDGE",
        help="the edge relay it dials instead of the relay (one of the project's edges)",
    )
    add_site.add_argument(
        "--transport",
        metavar="SCHEME",
        help="the transport it dials (default: the first of the relay, or of its --via edge)",
    )
    add_site.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="where its agent serves metrics, written into its kit; 'off' to disable "
        "(default: the project's sites_metrics_listen, else none: `site start` takes "
        f"{SITE_DEFAULT}, or a free port when that one is taken)",
    )
    workspace_option(add_site)
    add_site.set_defaults(func=_add_site)

    add_admin = sub.add_parser("add-admin", help="issue a kit for a new admin from the same CA")
    add_admin.add_argument("name", metavar="NAME")
    add_admin.add_argument(
        "--role", required=True, choices=[r.value for r in AdminRole], help="what it may do"
    )
    workspace_option(add_admin)
    add_admin.set_defaults(func=_add_admin)

    revoke = sub.add_parser(
        "revoke",
        help="revoke a participant's certificate (the relay refuses it from then on)",
        description="Record the revocation, and write the revocation list (CRL) signed by the "
        "root CA to WORKSPACE/state/crl.pem and into the relay's kit. A relay started from "
        "that kit re-reads it within a second; copy it to a relay deployed elsewhere.",
    )
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--reason", default="unspecified", choices=list(REASONS))
    workspace_option(revoke)
    revoke.set_defaults(func=_revoke)

    listing = sub.add_parser("list", help="list the certificates issued and their state")
    workspace_option(listing)
    listing.set_defaults(func=_list)
    sub.seal()

    kit = commands.add_parser("kit", help="check a startup kit")
    kit_sub = kit.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = kit_sub.add_parser(
        "verify",
        help="check a kit's signature, certificate chain and expiry",
        description="Check that the kit is as provisioned (manifest signed by its root CA, "
        "every file unchanged), that its certificate chains to that CA and is valid now, and "
        "that its key is private. Prints OK, or the problem (exit code 3).",
    )
    verify.add_argument("kit_dir", type=Path, metavar="KIT_DIR")
    verify.add_argument(
        "--ca",
        type=Path,
        metavar="ROOT_CA",
        help="also require the kit's root CA to be this one (e.g. WORKSPACE/state/rootCA.pem)",
    )
    verify.add_argument(
        "--crl",
        type=Path,
        metavar="CRL",
        help="also check that the kit's certificate is not revoked (WORKSPACE/state/crl.pem)",
    )
    verify.set_defaults(func=_verify)


def _print(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        print(outcome, flush=True)


def _init(args: argparse.Namespace) -> int:
    project = Project.load(args.project)
    workspace, created = ProvisioningWorkspace.create_or_open(args.output, project)
    if created:
        print(f"created root CA for project {project.name} in {workspace.state}")
    else:
        print(f"reusing the root CA and records in {workspace.state}")
    with workspace.locked():
        _print(workspace.provision(project))
    return EXIT_OK


def _add_site(args: argparse.Namespace) -> int:
    workspace = ProvisioningWorkspace.open(args.workspace)
    with workspace.locked():
        outcome = workspace.add_site(
            args.name, transport=args.transport, metrics_listen=args.metrics_listen, via=args.via
        )
        _print([outcome])
    return EXIT_OK


def _add_admin(args: argparse.Namespace) -> int:
    workspace = ProvisioningWorkspace.open(args.workspace)
    with workspace.locked():
        _print([workspace.add_admin(args.name, role=AdminRole(args.role))])
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    workspace = ProvisioningWorkspace.open(args.workspace)
    with workspace.locked():
        _print([workspace.revoke(args.name, reason=args.reason)])
    return EXIT_OK


ISSUED_COLUMNS = ("NAME", "ROLE", "SERIAL", "VALID UNTIL", "STATE")


def _list(args: argparse.Namespace) -> int:
    workspace = ProvisioningWorkspace.open(args.workspace)
    rows: list[tuple[str, str, str, str, str]] = []
    for record in workspace.issued():
        role = record.role + (f" ({record.admin_role})" if record.admin_role else "")
        role += f" via {record.via}" if record.via else ""
        state = (
            "active"
            if record.active
            else f"revoked {(record.revoked_at or '')[:10]} ({record.reason})"
        )
        rows.append((record.name, role, record.serial, record.not_after[:10], state))
    print(format_table(ISSUED_COLUMNS, rows))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    pinned = None
    if args.ca is not None:
        try:
            pinned = x509.load_pem_x509_certificate(args.ca.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--ca {args.ca}: not a readable PEM certificate: {exc}") from exc
    try:
        kit = load_kit(args.kit_dir, ca=pinned)
        if args.crl is not None:
            try:
                revoked = parse_crl(args.crl.read_bytes(), kit.ca_certificate)
            except (OSError, ConfigError) as exc:
                raise KitError(f"--crl {args.crl}: {exc}") from None
            revocation = revoked.get(kit.certificate.serial_number)
            if revocation is not None:
                raise KitError(f"kit {args.kit_dir} refused: {revocation.describe()}")
    except KitError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"OK: {kit.describe()}")
    return EXIT_OK
