"""generation.lint: each rule on its own, then several at once."""

from __future__ import annotations

import dataclasses
import re
import sys
import unicodedata

import pytest

from generation import lint as lint_module
from generation.brief import Brief
from generation.lint import RULES, LintConfig, lint, product_terms

BRIEF = Brief(
    "Ridgeline trail-running shoes",
    "Lightweight trail-running shoes with a grippy lugged sole, a rock plate and a breathable, "
    "quick-drying upper.",
    "Casual hikers who head out on weekends; value comfort and reliable grip over speed.",
    price=129.0,
)
VOICED = dataclasses.replace(BRIEF, brand_voice="Warm and plain-spoken, never pushy about speed.")
# A four-figure price: facts() writes it "$1,299".
TENT = Brief("Summit tent", "A four-season tent for 2 people.", "Winter campers.", price=1299.0)
# The same number written without a thousands separator, and a percentage among the facts.
TENT_PLAIN = Brief(
    "Summit tent", "A four-season tent, model 1299, with a 30% recycled fly.", "Winter campers."
)


def rules(text: str, brief: Brief = BRIEF, config: LintConfig | None = None) -> set[str]:
    return {finding.rule for finding in lint(text, brief, config).findings}


@pytest.mark.parametrize(
    "line",
    [
        "Grip every weekend trail in comfort with Ridgeline.",
        "Ridgeline shoes for $129 give you weekend trail grip.",
        "Ridgeline shoes for 129 dollars give you weekend trail grip.",
        "Ridgeline shoes keep your footing secure on weekend trails.",
        "Find your weekend comfort in a lightweight shoe.",
        "Built for trail-running on lazy weekends.",
    ],
)
def test_clean_line_passes_every_rule(line: str) -> None:
    report = lint(line, BRIEF)
    assert report.passed
    assert report.findings == ()
    assert report.reasons() == []


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("Ridgeline.", "length"),
        (
            "Ridgeline shoes carry casual hikers over wet roots, loose gravel, slick boulders and "
            "muddy switchbacks, then dry out by the time lunch is unpacked at the top.",
            "length",
        ),
        ("Ridgeline shoes: see http://ridgeline.example for more.", "markup"),
        ("Ridgeline shoes at www.example for your weekends.", "markup"),
        ("Ridgeline shoes at ridgeline-shoes.shop for your weekends.", "markup"),
        ("Ridgeline shoes at bit.ly/grip for your weekends.", "markup"),
        ("Ridgeline shoes at Ridgeline.co.uk for your weekends.", "markup"),
        ("Ridgeline shoes at ridgeline.com for your weekends.", "markup"),
        ("Ridgeline shoes at ridgeline.example/grip for your weekends.", "markup"),
        ("Ridgeline shoes give you <b>real</b> grip on trails.", "markup"),
        ("Ridgeline shoes give you **real** grip on trails.", "markup"),
        ("Ridgeline shoes give you real grip on #trails today.", "markup"),
        ("Ridgeline shoes give you real grip, says @hiker today.", "markup"),
        ("Ridgeline shoes: [see more](x) for weekend trail grip.", "markup"),
        ("Ridgeline shoes, guaranteed grip on every weekend trail.", "banned_phrase"),
        ("Ridgeline shoes, GUARANTEED grip on every weekend trail.", "banned_phrase"),
        ("Ridgeline shoes: risk-free grip on every weekend trail.", "banned_phrase"),
        ("Ridgeline shoes: the cure for slippery weekend trails.", "banned_phrase"),
        ("Lose Weight on weekend trails in Ridgeline shoes.", "banned_phrase"),
        # other forms of a banned word, and spellings that only hide it from a plain match
        ("Ridgeline shoes guarantee grip on weekend trails.", "banned_phrase"),
        ("Ridgeline shoes, guaranteeing grip on weekend trails.", "banned_phrase"),
        ("Ridgeline shoes: miracles on weekend trails.", "banned_phrase"),
        ("Ridgeline shoes cured my slippery weekend trails.", "banned_phrase"),
        ("Ridgeline shoes: healing for weekend trail feet.", "banned_phrase"),
        ("Ridgeline shoes, guar\u200banteed grip on weekend trails.", "banned_phrase"),
        ("Ridgeline shoes: risk\u2011free grip on weekend trails.", "banned_phrase"),
        ("Ridgeline shoes: \uff47uaranteed grip on weekend trails.", "banned_phrase"),
        # a hyphen where the phrase has a space makes the same claim
        ("FDA-approved Ridgeline shoes for weekend trails.", "banned_phrase"),
        ("Clinically-proven grip in Ridgeline shoes on weekend trails.", "banned_phrase"),
        ("Doctor\u2011recommended Ridgeline shoes for weekend trails.", "banned_phrase"),
        ("Ridgeline shoes: weight-loss walks on weekend trails.", "banned_phrase"),
        ("Ridgeline shoes: no-risk grip on weekend trails.", "banned_phrase"),
        ("Save 20% on Ridgeline shoes for weekend trail grip.", "invented_number"),
        ("Ridgeline shoes for $12 give weekend trail grip.", "invented_number"),
        ("Big % savings on Ridgeline shoes every weekend.", "invented_number"),
        ("Ridgeline shoes: a grippy lugged sole, a rock plate and more.", "prompt_echo"),
        ("Ridgeline shoes: value comfort and reliable grip over speed.", "prompt_echo"),
        ("Ridgeline shoes speaks to the customer described and grips.", "prompt_echo"),
        ("Product: Ridgeline shoes for weekend trail comfort.", "prompt_echo"),
        ("Ridgeline grips trails, Ridgeline grips trails, every weekend.", "repetitive"),
        ("Comfort and grip for every weekend outing, rain or shine.", "off_product"),
    ],
)
def test_line_fails_only_its_rule(line: str, rule: str) -> None:
    report = lint(line, BRIEF)
    assert {finding.rule for finding in report.findings} == {rule}
    assert not report.passed


@pytest.mark.parametrize(
    "line",
    [
        "Secure footing on weekend trails in Ridgeline shoes.",  # 'cure' inside a word
        "Treat your weekend feet to Ridgeline shoes.",  # 'treats' is banned, 'treat' is not
        "Ridgeline shoes keep weekend hikers healthy and dry.",
        "Ridgeline shoes, a curious grip on weekend trails.",
    ],
)
def test_words_that_only_contain_a_banned_one_pass(line: str) -> None:
    assert "banned_phrase" not in rules(line, BRIEF)


@pytest.mark.parametrize(
    "line",
    [
        "Ridgeline shoes weigh 1.7 pounds for weekend trails.",
        "Ridgeline shoes: a 3.5 mm rock plate, 4.5mm lugs.",
        "Ridgeline shoes for weekend trails, e.g. muddy ones.",
        "Ridgeline shoes for every U.S. weekend trail.",
        "Ridgeline shoes for trails... and weekends.",
        # Sentences run together without a space are not domains either.
        "Ridgeline shoes. Lace.Step.Repeat. Every weekend.",
        "Ridgeline shoes grip fast.Drains clean on weekend trails.",
        "Ridgeline shoes vs.the rest on weekend trails.",
        "Ridgeline shoes grip faster.Try them on weekend trails.",
    ],
)
def test_what_only_looks_like_a_domain_is_not_markup(line: str) -> None:
    assert "markup" not in rules(line)


def test_prompt_echo_includes_brand_voice() -> None:
    line = "Ridgeline shoes: warm and plain-spoken, never pushy about speed."
    assert rules(line, BRIEF) == set()
    assert rules(line, VOICED) == {"prompt_echo"}


@pytest.mark.parametrize(
    ("line", "config", "expected"),
    [
        ("Ridgeline.", LintConfig(min_chars=10, max_chars=30), set()),
        ("Ridgeline.", LintConfig(min_chars=11, max_chars=30), {"length"}),
        ("Ridgeline shoes grip on trails.", LintConfig(min_chars=10, max_chars=31), set()),
        ("Ridgeline shoes grip on trails.", LintConfig(min_chars=10, max_chars=30), {"length"}),
    ],
)
def test_length_bounds_are_configurable(line: str, config: LintConfig, expected: set[str]) -> None:
    assert rules(line, config=config) == expected


def test_length_reason_names_the_bounds() -> None:
    (reason,) = lint("Ridgeline.", BRIEF).reasons()
    assert re.fullmatch(r"length: 10 characters, outside 20\W140", reason)


@pytest.mark.parametrize(("min_chars", "max_chars"), [(5, 5), (10, 5), (0, 10), (-3, 10)])
def test_lint_config_validate_rejects_bad_bounds(min_chars: int, max_chars: int) -> None:
    with pytest.raises(ValueError, match="1 <= min < max"):
        LintConfig(min_chars=min_chars, max_chars=max_chars).validate()


def test_lint_config_validate_returns_itself() -> None:
    config = LintConfig(min_chars=1, max_chars=2)
    assert config.validate() is config


def test_custom_banned_phrases_replace_the_default() -> None:
    config = LintConfig(banned_phrases=("speed",))
    assert rules("Ridgeline shoes, guaranteed grip on every weekend trail.", config=config) == set()
    report = lint("Ridgeline shoes trade Speed for grip on weekend trails.", BRIEF, config)
    assert report.reasons() == ["banned_phrase: uses 'speed'"]


@pytest.mark.parametrize(
    ("line", "brief", "expected"),
    [
        ("The Summit tent sleeps 2 for $1299.", TENT, set()),
        ("The Summit tent sleeps 2 for $1,299.", TENT, set()),
        ("The Summit tent sleeps 2 for $1,299.00.", TENT, set()),
        ("The Summit tent sleeps 4 for $1,299.", TENT, {"invented_number"}),
        ("The Summit tent 1,299 keeps winter out.", TENT_PLAIN, set()),
        ("A 30% recycled fly on the Summit tent.", TENT_PLAIN, set()),
        ("A 30\u066a recycled fly on the Summit tent.", TENT_PLAIN, set()),
        ("A 30\ufe6a recycled fly on the Summit tent.", TENT_PLAIN, set()),
        ("A 40% recycled fly on the Summit tent.", TENT_PLAIN, {"invented_number"}),
        ("A recycled fly on the Summit tent, 20% off.", TENT, {"invented_number"}),
    ],
)
def test_numbers_must_come_from_the_facts(line: str, brief: Brief, expected: set[str]) -> None:
    assert rules(line, brief) == expected


def _full_width(text: str) -> str:
    """As copy in Chinese or Japanese writes ASCII: each printable character's full-width form."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Before, each of these passed the markup rule, and the price was an invented number.
        (f"Ridgeline shoes at {_full_width('www.ridgeline.com')} for trails.", {"markup"}),
        (f"Ridgeline shoes at {_full_width('ridgeline.shop')} for trails.", {"markup"}),
        (f"Ridgeline shoes at {_full_width('https://x')} for trails.", {"markup"}),
        (f"Ridgeline shoes give you {_full_width('<b>real</b>')} grip.", {"markup"}),
        (f"Ridgeline shoes, says {_full_width('@hiker')} on weekend trails.", {"markup"}),
        (f"Ridgeline shoes give you {_full_width('**real**')} grip on trails.", {"markup"}),
        (f"Ridgeline shoes, {_full_width('129')} dollars of weekend grip.", set()),
        ("Ridgeline shoes, \u0661\u0662\u0669 dollars of weekend grip.", set()),
        (f"Ridgeline shoes, {_full_width('130')} dollars of weekend grip.", {"invented_number"}),
        (f"Ridgeline shoes give weekend hikers {_full_width('%')} more grip.", {"invented_number"}),
        # The Arabic and the small percent sign: a percentage the facts do not give, or give.
        ("Ridgeline shoes give weekend hikers \u066a more grip.", {"invented_number"}),
        ("Ridgeline shoes give weekend hikers \ufe6a more grip.", {"invented_number"}),
        ("Ridgeline shoes, \u0662\u0660\u066a off for weekend trails.", {"invented_number"}),
        ("Ridgeline shoes: 100\u066a grip on every trail.", {"banned_phrase", "invented_number"}),
        # A superscript or subscript is no number of its own: NFKC reads each as the digit 2.
        ("Ridgeline shoes, made with less CO₂, for weekend trails.", set()),
        ("Ridgeline shoes grip every m² of your weekend trails.", set()),
        ("Ridgeline shoes grip every ㎡ of your weekend trails.", set()),
        # Whereas a fraction or a circled number is one: the facts must give it.
        ("Ridgeline shoes at ½ price for weekend trails.", {"invented_number"}),
        ("Ridgeline shoes, ⑳ dollars off for weekend trail grip.", {"invented_number"}),
    ],
)
def test_full_width_and_other_digits_read_as_what_they_stand_for(
    line: str, expected: set[str]
) -> None:
    assert rules(line) == expected


def test_product_terms_split_the_name() -> None:
    # Stems: "shoes", "shoe" and "Ridgeline's" all match them.
    assert product_terms(BRIEF) == {"ridgeline", "trail", "running", "shoe"}


@pytest.mark.parametrize(
    ("name", "terms"),
    [
        ("Bügeleisen Kraft", {"bügeleisen", "kraft"}),
        ("Чайник Аврора", {"чайник", "аврора"}),
        ("Ｘ5 phone", {"x5", "phone"}),  # noqa: RUF001 (full-width, folded)
        ("Summit tent 2", {"summit", "tent"}),
    ],
)
def test_product_terms_in_any_script(name: str, terms: set[str]) -> None:
    assert product_terms(Brief(name, "A product.", "Anyone.")) == terms


def test_off_product_reason_and_echo_keep_the_brief_as_written() -> None:
    kettle = Brief("Чайник Аврора", "Стеклянный чайник закипает за три минуты.", "Все.")  # noqa: RUF001
    assert lint("Завтрак больше никогда не будет ждать вас утром.", kettle).reasons() == [
        "off_product: does not mention 'Чайник Аврора' or its category"
    ]
    (reason,) = lint("Аврора: стеклянный чайник закипает за три минуты.", kettle).reasons()
    assert reason == "prompt_echo: copies the prompt: 'стеклянный чайник закипает за три минуты'"


@pytest.mark.parametrize(
    ("line", "brief"),
    [
        ("Grip every weekend path in Ridgeline comfort.", BRIEF),
        ("Grip every weekend path in a comfortable shoe.", BRIEF),
        ("Grip every weekend path in comfortable shoes.", BRIEF),
        ("Grip every weekend path with trail-ready comfort.", BRIEF),
        ("Grip every weekend path with running comfort.", BRIEF),
        ("Grip every weekend path in comfort, in any trails.", BRIEF),
        # The possessive of the name still names the product.
        ("Ridgeline's grip keeps you steady all weekend.", BRIEF),
        ("Ridgeline\u2019s grip keeps you steady all weekend.", BRIEF),
        # A trade or service mark sign is no part of the name (NFKC had made it 'ridgelinetm').
        ("Ridgeline\u2122 keeps you steady all weekend.", BRIEF),
        ("Ridgeline\u2120 keeps you steady all weekend.", BRIEF),
        ("Go\u2122 further on every morning run.", Brief("Go", "A cup.", "Anyone.")),
        ("Go further on every morning run.", Brief("Go\u2122", "A cup.", "Anyone.")),
        # A name made only of short words is still a name.
        ("Roll out the Zen mat for calmer mornings.", Brief("Zen mat", "A cork mat.", "Yogis.")),
        # Letters outside a-z, and a model name of two characters.
        ("Чайник Аврора кипятит воду за три минуты.", Brief("Чайник Аврора", "Чайник.", "Все.")),  # noqa: RUF001
        ("Das Bügeleisen glättet jedes Hemd im Nu.", Brief("Bügeleisen Kraft", "Ein.", "Alle.")),
        ("The X5 fits every pocket and every budget.", Brief("X5", "A phone.", "Students.")),
        ("Go further on every morning run.", Brief("Go", "A cup.", "Anyone.")),
        ("Meet X, the cup for every evening.", Brief("X", "A cup.", "Anyone.")),
        # Scripts written without spaces: the name's words sit inside a longer run.
        ("オーロラケトルなら朝食を待たせません。", Brief("オーロラ ケトル", "ケトル。", "親。")),
        ("这款极光水壶三分钟烧开水。", Brief("极光水壶", "玻璃水壶。", "父母。")),
        # Devanagari, its vowel signs inside its words.
        ("केतली अरोरा तीन मिनट में पानी उबालती है।", Brief("केतली अरोरा", "केतली।", "माता-पिता।")),
    ],
)
def test_off_product_accepts_a_mention(line: str, brief: Brief) -> None:
    assert "off_product" not in rules(line, brief)


@pytest.mark.parametrize(
    ("line", "brief"),
    [
        ("The X500 fits every pocket and every budget.", Brief("X5", "A phone.", "Students.")),
        ("Новое утро для всей семьи, каждый день.", Brief("Чайник Аврора", "Стекло.", "Все.")),  # noqa: RUF001
        ("新しいケトルで朝食を待たせません。", Brief("オーロラケトル", "ケトル。", "親。")),
        # A short name's letters inside another word are not the name.
        ("Good mornings start with a warm cup.", Brief("Go", "A cup.", "Anyone.")),
        ("Relax with a warm cup every evening.", Brief("X", "A cup.", "Anyone.")),
        ("A cozy cup for chilly winter mornings.", Brief("Oz", "A cup.", "Anyone.")),
    ],
)
def test_off_product_refuses_a_line_without_the_name(line: str, brief: Brief) -> None:
    assert "off_product" in rules(line, brief)


def test_every_failing_rule_is_reported_in_rule_order() -> None:
    report = lint("Save 20% at www.example with Ridgeline, guaranteed!", BRIEF)
    assert [finding.rule for finding in report.findings] == [
        "markup",
        "banned_phrase",
        "invented_number",
    ]
    assert report.reasons() == [
        "markup: contains 'www.'",
        "banned_phrase: uses 'guaranteed'",
        "invented_number: numbers not in the product facts: 20",
    ]
    assert list(RULES) == [
        "length",
        "markup",
        "banned_phrase",
        "invented_number",
        "prompt_echo",
        "repetitive",
        "off_product",
        "lost_character",
    ]


def test_a_line_holding_a_character_lost_in_decoding_is_refused() -> None:
    # "Caf\ufffd-ready" is what a shopper would have read, live unseen under auto_approve.
    brief = Brief(product_name="Ridgeline", product_description="Trail shoes.", segment="Hikers.")
    refused = lint("Ridgeline: caf\ufffd-ready comfort on every trail.", brief)
    assert refused.reasons() == ["lost_character: contains U+FFFD, a character lost in decoding"]
    assert lint("Ridgeline: café-ready comfort on every trail.", brief).passed


def test_a_worker_remembers_a_bounded_number_of_characters_and_names() -> None:
    """Both caches lived as long as the worker, one entry per distinct character or product name
    ever linted: up to Unicode's 1.1 million characters, 130 MB a worker."""
    brief = Brief(product_name="Go", product_description="Shoes.", segment="Runners.")
    for start in range(0x4E00, 0x4E00 + 3 * lint_module.AS_NUMBER_CACHE, 1000):
        lint("".join(map(chr, range(start, start + 1000))), brief)
    for n in range(2 * lint_module.NAME_PATTERN_CACHE):
        # "Go 5 1 2": words too short to be product terms, so the name is looked for whole.
        name = f"Go {n % 10} {n // 10 % 10} {n // 100}"
        lint("A shoe for runners.", dataclasses.replace(brief, product_name=name))
    assert lint_module._as_number.cache_info().currsize <= lint_module.AS_NUMBER_CACHE
    assert lint_module._name_pattern.cache_info().currsize <= lint_module.NAME_PATTERN_CACHE


def test_a_worked_examples_product_is_prompt_echo() -> None:
    # Written by the bundled model for the demo's weekend hikers in a live run: the product of the
    # prompt's second worked example, under the brief's category, passed every rule.
    line = "Nimbus trail-running shoes. A no-brainer choice for the city walker."
    report = lint(line, BRIEF)
    assert {finding.rule for finding in report.findings} == {"prompt_echo"}
    assert report.reasons() == [
        "prompt_echo: names 'Nimbus', the product of one of the prompt's worked examples"
    ]
    assert rules("Boil water fast with the Aurora kettle and Ridgeline shoes.") >= {"prompt_echo"}
    assert rules("Nimbus's grip, now in Ridgeline trail shoes for weekends.") == {"prompt_echo"}
    assert rules("Nimbus-grade grip in Ridgeline trail shoes for weekends.") == {"prompt_echo"}


def test_a_worked_examples_name_in_the_brief_itself_passes() -> None:
    # README's own API example sells an Aurora kettle; its copy must be able to say so.
    kettle = Brief("Aurora kettle", "A 1.7 l glass kettle.", "Busy parents.", price=49.0)
    assert rules("The Aurora kettle: hot water before the toast pops.", kettle) == set()
    jacket = Brief("Storm shell", "Shell in the Nimbus grey colourway.", "Cyclists.")
    assert "prompt_echo" not in rules("The Storm shell in Nimbus grey keeps cyclists dry.", jacket)


def test_example_brands_are_the_worked_examples_products() -> None:
    from generation.prompts import _EXAMPLES, EXAMPLE_BRANDS

    assert [example.product_name.split()[0] for example, _ in _EXAMPLES] == list(EXAMPLE_BRANDS)


@pytest.mark.parametrize(
    ("line", "label"),
    [
        # Written by the bundled model in live runs: the prompt's field labels, echoed into copy.
        ("Ridgeline shoes for weekend trails. Price: $129.", "Price:"),
        ("Ridgeline shoes, price : $129, for weekend trails.", "price :"),
        ("Ridgeline shoes for weekend trails. Brand voice: warm.", "Brand voice:"),
        ("Ridgeline shoes for weekend trails.\nPrice: $129.", "Price:"),
        ("Ridgeline shoes for weekend trails (Price: $129).", "Price:"),
        ("Audience: hikers. Ridgeline shoes for weekend trails.", "Audience:"),
        ("Ridgeline shoes. Customer: casual weekend hikers.", "Customer:"),
        ("Ridgeline shoes, Product name: grip on weekend trails.", "Product name:"),
        ("Ridgeline shoes for weekend trails. 'Price: $129'.", "Price:"),
        ("Ridgeline shoes for weekend trails \u2014 price: $129.", "price:"),
        # Chinese and Japanese copy writes the colon full-width.
        ("Ridgeline shoes for weekend trails. PRICE\uff1a$129.", "PRICE:"),
    ],
)
def test_a_prompt_label_in_the_copy_is_prompt_echo(line: str, label: str) -> None:
    assert lint(line, BRIEF).reasons() == [f"prompt_echo: writes the prompt's label {label!r}"]


def test_prompt_labels_are_every_label_the_prompt_writes() -> None:
    from generation.prompts import PROMPT_LABELS, build_messages

    asked = build_messages(dataclasses.replace(VOICED, leaders=("Ridgeline grips.",)))[-1]
    written = re.findall(r"^(\w+): ", asked["content"], re.MULTILINE)
    written += re.findall(r"(\w+): \$", asked["content"])  # Brief.facts() labels the price
    assert set(written) == {"Product", "Facts", "Price", "Customer", "Voice"}
    assert set(written) <= set(PROMPT_LABELS)


@pytest.mark.parametrize(
    "line",
    [
        "Ridgeline shoes at the right price for weekend trails.",
        "Ridgeline shoes: every customer gets weekend trail grip.",
        "Ridgeline shoes give your voice to weekend trails.",
        # Marketing English puts a colon after a phrase that ends in a label's word: a label
        # starts its line, sentence or clause, and these were refused as prompt_echo.
        "Ridgeline shoes for weekend trails at a fair price: $129.",
        "Same price: twice the grip. Ridgeline shoes for weekend trails.",
        "Ridgeline shoes for one customer: the weekend hiker.",
        "Weekend hikers, trust your inner voice: Ridgeline shoes grip wet rock.",
        "Ridgeline shoes. The audience: every weekend hiker on the trail.",
        # A plural possessive or a compound ends in a label's word, after an apostrophe or a
        # hyphen: punctuation, but inside the words, and these were refused as prompt_echo.
        "Weekend hikers' price: $129 for Ridgeline shoes that grip wet rock.",
        "Weekend hikers\u2019 price: $129 for Ridgeline shoes that grip wet rock.",
        "Ridgeline shoes for weekend trails, low-price: $129.",
    ],
)
def test_a_label_word_without_its_colon_or_after_another_word_is_copy(line: str) -> None:
    assert rules(line) == set()


def test_a_label_the_brief_writes_itself_passes() -> None:
    brief = dataclasses.replace(BRIEF, segment="Weekend hikers. Price: what matters most to them.")
    assert rules("Ridgeline shoes for weekend trails. Price: $129.", brief) == set()
    assert rules("Ridgeline shoes for weekend trails. Audience: hikers.", brief) == {"prompt_echo"}


def test_a_label_first_in_a_field_of_the_brief_is_its_own() -> None:
    """Read with the fields joined, a label opening one came after the last word of the field
    before (a persona without a full stop): it was no label of the brief's, and copy writing it
    was refused."""
    brief = dataclasses.replace(
        BRIEF, segment="Weekend hikers", brand_voice="Price: always said upfront"
    )
    assert rules("Ridgeline shoes for weekend trails. Price: $129.", brief) == set()


KETTLE_ZH = Brief(
    "极光水壶",
    "一款一点七升的玻璃水壶，三分钟就能把水烧开。",  # noqa: RUF001
    "需要快速热水的忙碌父母，早上时间很紧。",  # noqa: RUF001
)
KETTLE_JA = Brief(
    "オーロラケトル",
    "ガラス製の電気ケトルで、たった三分でお湯が沸きます。",
    "朝の時間がない忙しい親。",
)
KETTLE_TH = Brief("กาต้มน้ำออโรร่า", "กาต้มน้ำแก้วที่ต้มน้ำเดือดได้ในสามนาที", "พ่อแม่ที่ยุ่งในตอนเช้า")


@pytest.mark.parametrize(
    ("line", "brief", "reason"),
    [
        # A run of a script without spaces was one word to both rules: no six copied, no three
        # said twice.
        (
            "极光水壶：一款一点七升的玻璃水壶，三分钟就能把水烧开。",  # noqa: RUF001
            KETTLE_ZH,
            "prompt_echo: copies the prompt: '一款一点七升的玻璃水壶三'",
        ),
        (
            "オーロラケトルは、ガラス製の電気ケトルで、たった三分でお湯が沸きます。",
            KETTLE_JA,
            "prompt_echo: copies the prompt: 'ガラス製の電気ケトルでたった三分で'",
        ),
        (
            "กาต้มน้ำออโรร่า กาต้มน้ำแก้วที่ต้มน้ำเดือดได้ในสามนาที",
            KETTLE_TH,
            "prompt_echo: copies the prompt: 'กาต้มน้ำแก้วที่ต้มน้ำเดือด'",
        ),
        (
            "极光水壶三分钟烧开水，三分钟烧开水，早餐不等待。",  # noqa: RUF001
            KETTLE_ZH,
            "repetitive: repeats '三分钟烧开水'",
        ),
        (
            "オーロラケトルはお湯がすぐに沸きます、お湯がすぐに沸きます。",
            KETTLE_JA,
            "repetitive: repeats 'お湯がすぐに沸き'",
        ),
        (
            "กาต้มน้ำออโรร่า ต้มน้ำเร็วมาก ต้มน้ำเร็วมาก ทุกเช้า",
            KETTLE_TH,
            "repetitive: repeats 'ต้มน้ำเร็วมา'",
        ),
    ],
)
def test_a_script_without_spaces_is_read_a_character_at_a_time(
    line: str, brief: Brief, reason: str
) -> None:
    assert lint(line, brief).reasons() == [reason]


@pytest.mark.parametrize(
    ("line", "brief"),
    [
        # A few words of the facts, as English copy may use five: three minutes, glass, parents.
        ("极光水壶三分钟就能烧开水，忙碌的早晨不再等待。", KETTLE_ZH),  # noqa: RUF001
        ("オーロラケトルなら三分でお湯が沸き、朝食を待たせません。", KETTLE_JA),
        ("กาต้มน้ำออโรร่าต้มน้ำเดือดในสามนาที ทันใจพ่อแม่ทุกเช้า", KETTLE_TH),
    ],
)
def test_a_few_words_of_the_facts_in_a_script_without_spaces_pass(line: str, brief: Brief) -> None:
    assert rules(line, brief) == set()


def test_a_name_said_twice_in_a_script_without_spaces_is_not_repetitive() -> None:
    # Two words again, as "Ridgeline shoes ... Ridgeline shoes" may be in English.
    assert rules("极光水壶让早晨更轻松，选择极光水壶就对了。", KETTLE_ZH) == set()  # noqa: RUF001


def test_words_beside_a_script_without_spaces_count_whole() -> None:
    ridgeline = dataclasses.replace(BRIEF, product_name="Ridgeline 越野跑鞋")
    line = "Ridgeline 越野跑鞋: grippy lugged sole, a rock plate and more."
    assert rules(line, ridgeline) == {"prompt_echo"}


KETTLE_HI = Brief(
    "केतली अरोरा",
    "काँच की केतली जो तीन मिनट में पानी उबालती है और सुबह जल्दी काम आती है।",
    "व्यस्त माता-पिता।",
)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        # A vowel sign (Mc) or other mark (Mn) is part of its word, not a break between two:
        # 'केतली' was read as 'क' and 'तल', and six of those pieces made a run of the prompt.
        (
            "केतली अरोरा: काँच की केतली जो तीन मिनट में पानी उबालती है।",
            "prompt_echo: copies the prompt: 'काँच की केतली जो तीन मिनट'",
        ),
        (
            "केतली अरोरा पानी उबालती है, पानी उबालती है, हर सुबह।",
            "repetitive: repeats 'पानी उबालती है'",
        ),
    ],
)
def test_a_words_marks_stay_inside_it(line: str, reason: str) -> None:
    assert lint(line, KETTLE_HI).reasons() == [reason]


def test_words_of_a_script_with_vowel_signs_are_whole() -> None:
    assert lint_module._words("केतली अरोरा पानी उबालती है") == [
        "केतली",
        "अरोरा",
        "पानी",
        "उबालती",
        "है",
    ]
    # Five of the prompt's words and two of the copy's own: no run of six copied.
    assert rules("केतली अरोरा: काँच की केतली तीन मिनट में, हर सुबह।", KETTLE_HI) == set()


def test_a_reason_quotes_thai_as_written() -> None:
    """NFKC writes the vowel SARA AM (U+0E33) as NIKHAHIT and SARA AA (U+0E4D U+0E32): the same
    on screen, other characters to anyone who searches the line for what the reason quotes."""
    (reason,) = lint("กาต้มน้ำออโรร่า ต้มน้ำเร็วมาก ต้มน้ำเร็วมาก ทุกเช้า", KETTLE_TH).reasons()
    assert "\u0e33" in reason
    assert "\u0e4d" not in reason


def test_every_combining_mark_continues_a_word() -> None:
    marks = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "M"]
    assert re.fullmatch(f"{lint_module._MARK}+", "".join(marks))


@pytest.mark.parametrize(
    ("line", "quoted"),
    [
        # The reason quoted the sign and one character: '#1', a banned phrase this line never used.
        ("Ridgeline shoes, rated #16 by weekend hikers on trails.", "#16"),
        ("Ridgeline shoes give you real grip on #trails today.", "#trails"),
        ("Ridgeline shoes give you real grip, says @hiker today.", "@hiker"),
        ("Ridgeline shoes give you real grip on #रास्ते today.", "#रास्ते"),
    ],
)
def test_a_markup_reason_quotes_the_whole_tag(line: str, quoted: str) -> None:
    assert lint(line, BRIEF).reasons()[0] == f"markup: contains {quoted!r}"


KETTLE = Brief("Aurora kettle", "A 1.7 l glass kettle.", "Busy parents.", price=1299.0)
# A proportion in thousandths among the facts.
SLOPE = Brief("Summit tent", "A four-season tent pitched on a 5\u2030 slope.", "Winter campers.")


@pytest.mark.parametrize(
    ("line", "brief", "reasons"),
    [
        # Arabic writes the thousands and decimal separators as U+066C and U+066B: the facts'
        # '$1,299' and '1.7' were each read as two invented numbers.
        ("The Aurora kettle for $1\u066c299, for busy parents.", KETTLE, []),
        ("The Aurora kettle for $\u0661\u066c\u0662\u0669\u0669, for busy parents.", KETTLE, []),
        ("The Aurora kettle holds \u0661\u066b\u0667 l for busy parents.", KETTLE, []),
        (
            "The Aurora kettle for $1\u066c399, for busy parents.",
            KETTLE,
            ["invented_number: numbers not in the product facts: 1\u066c399"],
        ),
        # Per mille and per ten thousand (and Arabic's own signs for them) claim a proportion as
        # the percent sign does, and passed where the facts give none.
        (
            "The Aurora kettle: \u2030 more tea for busy parents.",
            KETTLE,
            ["invented_number: a per-mille figure not in the product facts"],
        ),
        (
            "The Aurora kettle: \u0609 more tea for busy parents.",
            KETTLE,
            ["invented_number: a per-mille figure not in the product facts"],
        ),
        (
            "The Aurora kettle: \u2031 more tea for busy parents.",
            KETTLE,
            ["invented_number: a per-ten-thousand figure not in the product facts"],
        ),
        (
            "The Aurora kettle: \u060a more tea for busy parents.",
            KETTLE,
            ["invented_number: a per-ten-thousand figure not in the product facts"],
        ),
        ("The Summit tent stands on a 5\u2030 slope for winter campers.", SLOPE, []),
        ("The Summit tent stands on a \u0665\u0609 slope for winter campers.", SLOPE, []),
        # Five per mille is not five per cent.
        (
            "The Summit tent stands on a 5% slope for winter campers.",
            SLOPE,
            ["invented_number: a percentage not in the product facts"],
        ),
        # '100%' in Arabic-Indic digits is the banned claim too.
        (
            "Ridgeline shoes: \u0661\u0660\u0660\u066a grip on every trail.",
            BRIEF,
            [
                "banned_phrase: uses '100%'",
                "invented_number: numbers not in the product facts: \u0661\u0660\u0660",
            ],
        ),
    ],
)
def test_arabic_separators_and_per_mille_signs_are_read(
    line: str, brief: Brief, reasons: list[str]
) -> None:
    assert lint(line, brief).reasons() == reasons


@pytest.mark.parametrize(
    ("line", "label"),
    [
        # A character drawn as a colon that NFKC leaves as it is (U+2236 RATIO and its like).
        ("Ridgeline shoes for weekend trails. Price\u2236 $129.", "Price\u2236"),
        ("Ridgeline shoes for weekend trails. Price\ua789 $129.", "Price\ua789"),
        ("Audience\u2236 hikers. Ridgeline shoes for weekend trails.", "Audience\u2236"),
        # A dash between a label and a number or a price: the field and its value, as written
        # with a colon.
        ("Ridgeline shoes for weekend trails. Price - $129.", "Price -"),
        ("Ridgeline shoes for weekend trails. Price \u2013 $129.", "Price \u2013"),
        ("Ridgeline shoes for weekend trails. Price \u2014 $129.", "Price \u2014"),
        ("Ridgeline shoes for weekend trails. Price\u2014$129.", "Price\u2014"),
        ("Ridgeline shoes for weekend trails (price \u2013 \u20ac129).", "price \u2013"),
        ("Price \u2013 129 dollars for Ridgeline shoes on weekend trails.", "Price \u2013"),
    ],
)
def test_a_prompt_label_with_a_colon_look_alike_or_a_dash_is_prompt_echo(
    line: str, label: str
) -> None:
    assert lint(line, BRIEF).reasons() == [f"prompt_echo: writes the prompt's label {label!r}"]


@pytest.mark.parametrize(
    "line",
    [
        # A dash after a label's word is copy when words follow it, or when the word follows
        # another: an aside, a list, a compound or a range.
        "Trail shoes - $129 and worth it, Ridgeline grips.",
        "Ridgeline shoes - $129 - grip for every weekend trail.",
        "Ridgeline shoes \u2013 grip for every weekend trail.",
        "Comfort \u2013 grip \u2013 price \u2013 Ridgeline shoes have it all.",
        "Facts \u2013 not hype \u2013 sell Ridgeline shoes to weekend hikers.",
        "Price \u2014 and grip \u2014 matter to weekend hikers in Ridgeline shoes.",
        "Price-conscious hikers pick Ridgeline shoes for weekend trails.",
        "Price- and grip-conscious hikers choose Ridgeline shoes.",
        "Ridgeline shoes: the price\u2013performance pick for weekend trails.",
        "Weekend trails, one price \u2014 Ridgeline shoes at $129.",
        "Ridgeline shoes \u2014 the customer favourite for weekend trails.",
        "Your voice - your trail - your Ridgeline shoes this weekend.",
        "Ridgeline shoes for weekend trails \u2014 at a price hikers like.",
        "Low price \u2013 $129 \u2013 for Ridgeline shoes on weekend trails.",
        "Ridgeline shoes at a fair price - $129 for weekend trails.",
        "Weekend hikers' price \u2013 $129 for Ridgeline shoes that grip.",
        "Ridgeline shoes for weekend trails, low-price \u2013 $129.",
        "Ridgeline shoes for weekend trails \u2013 customer-tested grip.",
    ],
)
def test_natural_copy_with_dashes_passes(line: str) -> None:
    assert rules(line) == set()


SHOES_JA = Brief("リッジラインシューズ", "グリップの効いたトレイル用シューズ。", "週末のハイカー。")


def test_a_katakana_name_said_twice_is_not_repetitive() -> None:
    """Katakana writes loanwords, longer than the hiragana words a third of a word fits: ケトル is
    'kettle', シューズ 'shoes'. Counted a third of a word each, the ten of 'Ridgeline shoes' were
    three words said twice, where 'Ridgeline shoes ... Ridgeline shoes' passes in English."""
    assert (
        rules("リッジラインシューズで週末の山道へ。雨の日もリッジラインシューズ。", SHOES_JA)
        == set()
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        # Three words said twice, as in English: the name and a word after it.
        (
            "リッジラインシューズ最高、リッジラインシューズ最高。",
            "repetitive: repeats 'リッジラインシューズ最'",
        ),
        # Hiragana still counts a third of a word: nine of them said twice are three words.
        (
            "リッジラインシューズ、すべらないやまみち、すべらないやまみち。",
            "repetitive: repeats 'すべらないやまみち'",
        ),
    ],
)
def test_three_words_of_kana_said_twice_are_repetitive(line: str, reason: str) -> None:
    assert lint(line, SHOES_JA).reasons() == [reason]


def test_the_prompt_is_read_once_per_brief_and_remembered_bounded() -> None:
    """The echo rule read the prompt's texts again for every line (its runs of six words, the
    labels and names it writes), though a batch lints many lines against one brief."""
    lint_module._prompt.cache_clear()
    lines = ["Ridgeline shoes grip every weekend trail.", "Ridgeline shoes dry out fast."]
    for line in lines:
        lint(line, BRIEF)
        lint(line, dataclasses.replace(BRIEF, leaders=(line,)))  # the leaders are not echo's
    assert lint_module._prompt.cache_info().misses == 1
    for n in range(2 * lint_module.PROMPT_CACHE):
        lint(lines[0], dataclasses.replace(BRIEF, segment=f"Hikers who walk {n} trails."))
    assert lint_module._prompt.cache_info().currsize <= lint_module.PROMPT_CACHE


def test_the_facts_are_read_once_per_brief_and_remembered_bounded() -> None:
    """The number rule read the facts again for every line (their numbers and proportion signs),
    though a batch lints many lines against one brief."""
    lint_module._facts.cache_clear()
    lines = ["Ridgeline shoes for $129 grip every weekend trail.", "Ridgeline: 30% more grip."]
    for line in lines:
        lint(line, BRIEF)
        lint(line, dataclasses.replace(BRIEF, segment="Weekend hikers.", leaders=(line,)))
    assert lint_module._facts.cache_info().misses == 1
    # Each brief's facts are its own: the name and the price are among them.
    assert "invented_number" in rules(lines[0], dataclasses.replace(BRIEF, price=99.0))
    assert rules(lines[1], dataclasses.replace(BRIEF, product_name="Ridgeline 30%")) == set()
    assert lint_module._facts.cache_info().misses == 3
    for n in range(2 * lint_module.FACTS_CACHE):
        lint(lines[0], dataclasses.replace(BRIEF, price=float(n)))
    assert lint_module._facts.cache_info().currsize <= lint_module.FACTS_CACHE


@pytest.mark.parametrize(
    "line",
    [
        # A hyphen against the word and the number joins them: a model name, an order number.
        "Customer-8812 says Ridgeline shoes grip on weekend trails.",
        "Product-129 is what hikers call Ridgeline shoes.",
        "Ridgeline shoes. Price\u20111299 was never the point.",
    ],
)
def test_a_label_joined_to_a_number_by_a_hyphen_is_no_label(line: str) -> None:
    assert "prompt_echo" not in rules(line)
