"""An ensemble's members, each card checked against the sha256 the ensemble's card records.

    from pneumo_fastai.inference.members import member_cards
    for card, path in member_cards(ensemble_card, "exports/ens.json"): ...

Every engine reads members through here (the torch loader for their weights, the OOD check for
their statistics), so that no member file is read unchecked. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from ..card import EnsembleCard, ModelCard, read_card, resolve_in_export
from ..errors import ModelFileError
from ..fileio import sha256_file


def member_cards(card: EnsembleCard, card_path: Path) -> list[tuple[ModelCard, Path]]:
    """Each member's card and its path, after checking it against the ensemble card's sha256."""
    out: list[tuple[ModelCard, Path]] = []
    for member in card.members:
        path = resolve_in_export(card, card_path, member.card, f"member {member.name}'s card")
        if path in [p for _, p in out]:
            raise ModelFileError(
                f"{card_path} lists member card {member.card} twice; an ensemble's members are "
                "distinct networks. Rebuild it with `pneumo-fastai train --folds` or `--seeds`."
            )
        if not path.is_file():
            raise ModelFileError(f"Member {member.name} of {card_path} is missing ({path}).")
        if sha256_file(path) != member.sha256:
            raise ModelFileError(
                f"Member {member.name} of {card_path} does not match the ensemble card "
                f"({path} was modified or replaced). Refusing to load it."
            )
        member_card = read_card(path)
        if not isinstance(member_card, ModelCard):
            raise ModelFileError(f"Member {member.name} of {card_path} is not a single model.")
        out.append((member_card, path))
    return out
