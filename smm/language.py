"""Language identification for the five supported languages, with lingua.

Lingua's time grows with the text, so long texts are judged on a bounded sample: the start and
the end (:data:`SAMPLE_CHARS` in all), cut at spaces. Any answer longer than that is long enough
for the sample to show its language.

:func:`mismatch` (prepare's check of a declared language, run on millions of examples) first
counts the different common function words of the five languages in the sample (each word
belongs to one language only); where the declared language's clearly dominate (at least
:data:`MIN_WORDS`, and :data:`DOMINANCE` times as many as any other language's) the sample is
taken to be in it, and only the rest is asked of lingua. On 66,572 answers (seeds, evaluation
cases, the feedback fixture with its 754 wrong-language answers, generated examples) this gives
lingua's decisions but one, while lingua runs for 10-15 % of them; it is weaker on mixed-language
text (docs/benchmarks.md).
"""
from __future__ import annotations

import re
from functools import lru_cache

from smm.tasks import LANGUAGES

MIN_CONFIDENCE = 0.5
SAMPLE_CHARS = 400
MIN_WORDS = 3
DOMINANCE = 3
# Frequent words of one language that none of the other four uses as a common word.
FUNCTION_WORDS = {
    "de": (
        "und der das ist nicht mit für auf dem des ein eine einen einem einer sich auch noch wie wir ihr "
        "ihre ihren sie zu zum zur im vom bei aus nach über oder aber wenn dann schon nur sehr mehr jetzt "
        "hier heute uns unser unsere unseren unserem euch euer eure euren dein deine deinen mein meine "
        "ich du bitte danke wird werden sind haben hat kann können muss diese dieser dieses alle viel "
        "neue neuen jeden jede immer gibt gerne wieder doch mal ganz schön gleich endlich nächste woche "
        "ihnen ab bis um vor durch gegen ohne zwischen seit dass weil damit sowie keine kein etwas nichts "
        "wer zwei drei viele ihrer kommt nehmen schnell kurze leicht machen geht gut wichtig möchten "
        "möchte sollten sollte könnt wollen würde wurde worden beim zusammen neu morgen gestern einfach "
        "natürlich wirklich bereits besonders ihm ihn"
    ).split(),
    "en": (
        "the and is are were you your our we with this that have has will be of on at it its from by not "
        "but or all more new now today get just can what when how who which their they them my about out "
        "up do week here there been would could should than then only into over every to for off each why "
        "where these those some any because while after before yours ours let good please instead one "
        "keep without little early also very much many most other same such own first last next share "
        "open great best make know take come see look find need want"
    ).split(),
    "fr": (
        "le les et est sont une pour avec dans sur pas plus nous vous votre vos notre ce cette ces qui "
        "être avoir fait très tout tous toute toutes bien aussi au aux leur leurs sans chez je il elle "
        "ils elles été encore ne sa ses mes mon ma déjà faire découvrez aujourd semaine prix seul peux "
        "alors puis dès petit pouvez peut envie fin nouveau nouvelle nouveaux grand faut avons avez "
        "sommes êtes ont fois jours toujours jamais rien chaque vers depuis pendant car donc ici voici "
        "merci beaucoup"
    ).split(),
    "es": (
        "el los las del una con más nuestro nuestra nuestros nuestras tus su sus estos estas pero muy "
        "también ya hoy aquí al lo cómo qué están hay gracias ahora tienda nuevo nueva descubre mi usted "
        "ustedes vuestro sin hasta donde cuando así eso esto ni mucho muchos días años día tiene tienen "
        "hemos somos vez tres buen buena bueno puedes puede hacer tener mejor después siempre otro otra "
        "nosotros ellos sólo solo eres soy fue han mañana ciudad tiempo quiero dónde cuál aún gran año"
    ).split(),
    "pt": (
        "é são uma com em na nas não nosso nossa nossos nossas você vocês seu sua seus suas isso mas "
        "muito muitos muita também já hoje aqui ao aos pelo pela estão há obrigado obrigada agora loja "
        "novo nova descubra meu minha até sem quando onde assim isto dia dias anos lá só mesmo pode podem "
        "antes vamos qual esse essa dois três pequena pequeno queremos temos fazer ter melhor depois "
        "sempre outro outra nós eles somente seja foi tem têm amanhã cidade tempo quero ainda ano"
    ).split(),
}
_LANGUAGE_OF = {word: language for language, words in FUNCTION_WORDS.items() for word in words}
_ALL_FUNCTION_WORDS = frozenset(_LANGUAGE_OF)
_WORD = re.compile(r"[^\W\d_]+")


@lru_cache(maxsize=1)
def _detector():
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    codes = [getattr(IsoCode639_1, code.upper()) for code in LANGUAGES]
    return LanguageDetectorBuilder.from_iso_codes_639_1(*codes).with_preloaded_language_models().build()


def sample(text: str, limit: int = SAMPLE_CHARS) -> str:
    """``text`` itself, or its first and last ``limit/2`` characters cut at word boundaries."""
    if len(text) <= limit:
        return text
    half = limit // 2
    head, tail = text[:half], text[-half:]
    head = head.rsplit(None, 1)[0] if " " in head.strip() else head
    tail = tail.split(None, 1)[-1] if " " in tail.strip() else tail
    return f"{head}\n{tail}".strip()


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code (de, en, fr, es, pt) of ``text``, or None when lingua is not confident."""
    text = sample(text)
    if not text.strip():
        return None
    values = _detector().compute_language_confidence_values(text)
    if not values or values[0].value < MIN_CONFIDENCE:
        return None
    return values[0].language.iso_code_639_1.name.lower()


def function_words_confirm(text: str, declared: str) -> bool:
    """True when ``text``'s function words are clearly those of ``declared``: at least
    :data:`MIN_WORDS` different ones, and :data:`DOMINANCE` times as many as of any other language."""
    counts = dict.fromkeys(FUNCTION_WORDS, 0)
    for word in _ALL_FUNCTION_WORDS.intersection(_WORD.findall(text.lower())):  # each different word once
        counts[_LANGUAGE_OF[word]] += 1
    own = counts.pop(declared, 0)
    return own >= MIN_WORDS and own >= DOMINANCE * max(counts.values())


def mismatch(text: str, declared: str) -> str | None:
    """The language ``text`` reads as where lingua is confident that it is not ``declared``, else None."""
    text = sample(text)
    if function_words_confirm(text, declared):
        return None
    detected = detect_language(text)
    return detected if detected and detected != declared else None
