"""The model-card tab: the card's essentials, its intended use among them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from pneumo_fastai.card import read_card
from pneumo_fastai.serve.app import card_markdown

CARD = Path(__file__).parents[1] / "fixtures" / "schema2" / "ens.json"


def test_the_card_tab_says_what_the_model_is_and_is_not_for():
    card = read_card(CARD)
    text = card_markdown(SimpleNamespace(exported=SimpleNamespace(card=card)), CARD)
    assert f"**Intended use** {card.intended_use.purpose}" in text
    assert all(use in text for use in card.intended_use.out_of_scope)
    assert card.intended_use.population in text and "ensemble of 2 (folds)" in text
