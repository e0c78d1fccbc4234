"""Auth commands: the signing key ring (`keys rotate [--documents]|list`), token and document keys."""

from __future__ import annotations

import click

from simveb.cli.app import CliError, fail_cleanly, main, settings_of


@main.group()
def keys() -> None:
    """Token and document signing keys (Ed25519, in <data_dir>/keys in development)."""


@keys.command("rotate")
@click.option("--documents", is_flag=True, help="rotate the document-signing key (certificate QR codes, PDFs)")
@click.pass_context
@fail_cleanly
def keys_rotate(ctx: click.Context, documents: bool) -> None:
    """Add a new signing key: new tokens use it; tokens signed by older keys stay valid until they expire."""
    from simveb.keys import KeyRing, document_ring, write_new_key

    settings = settings_of(ctx)
    if documents:
        if settings.documents.signing_key:
            raise CliError(
                "the document key comes from SIMVEB_DOCUMENTS__SIGNING_KEY: put the new key there and keep the"
                f" old one as a file in {settings.data_dir / 'keys' / 'documents'} (printed certificates stay verifiable)"
            )
        document_ring(settings)  # the first key exists before the new one, so the new one is newest
        path = write_new_key(settings.data_dir / "keys" / "documents")
        click.echo(f"new document key {path.stem} ({path}); certificates issued after a restart use it")
        return
    if settings.security.signing_key:
        raise CliError(
            "the signing key comes from SIMVEB_SECURITY__SIGNING_KEY: put the new key there and keep the old"
            f" one as a file in {settings.data_dir / 'keys'} until its last tokens expired"
        )
    directory = settings.data_dir / "keys"
    KeyRing.for_settings(settings)  # the first key exists before the new one, so the new one is newest
    path = write_new_key(directory)
    click.echo(f"new signing key {path.stem} ({path}); running servers sign with it within seconds")


@keys.command("list")
@click.pass_context
@fail_cleanly
def keys_list(ctx: click.Context) -> None:
    """The keys that verify tokens and certificate payloads, by kid; the signing ones are marked."""
    from simveb.keys import KeyRing, document_ring

    settings = settings_of(ctx)
    ring = KeyRing.for_settings(settings)
    for kid in ring.public:
        click.echo(f"{'signing  ' if kid == ring.kid else 'verifying'} {kid}")
    documents = document_ring(settings)
    for kid in documents.public:
        click.echo(f"{'signing  ' if kid == documents.kid else 'verifying'} {kid} (documents)")
