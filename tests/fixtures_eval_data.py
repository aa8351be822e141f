"""Evaluation test data: hand-written good answers for every task in all five languages, and a
fixture that writes one case per task × language with the good answer to each.

Each answer in :data:`GOOD` is a valid answer to the request :data:`PROMPTS` holds for its task and
language on ``instagram``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

GOOD: dict[tuple[str, str], dict] = {
    # ---- post_generation ----------------------------------------------------------------------
    ("post_generation", "de"): {
        "post": "Frisches Brot, jeden Sonntag ab sieben Uhr! Unsere Bäcker kneten den Teig von Hand und backen "
                "ihn im Steinofen, damit dein Frühstück nach Heimat schmeckt.",
        "hashtags": ["#Bäckerei", "#frischesBrot", "#Sonntagsfrühstück"],
        "call_to_action": "Komm vorbei und probiere unser Sauerteigbrot!",
    },
    ("post_generation", "en"): {
        "post": "Fresh bread every Sunday from seven o'clock! Our bakers knead the dough by hand and bake it "
                "in a stone oven, so your breakfast tastes like home.",
        "hashtags": ["#bakery", "#freshbread", "#sundaybreakfast"],
        "call_to_action": "Drop by and taste our sourdough loaf!",
    },
    ("post_generation", "fr"): {
        "post": "Du pain frais tous les dimanches dès sept heures ! Nos boulangers pétrissent la pâte à la main "
                "et la cuisent au four à pierre pour que votre petit-déjeuner ait le goût de la maison.",
        "hashtags": ["#boulangerie", "#painfrais", "#petitdejeuner"],
        "call_to_action": "Passez nous voir et goûtez notre pain au levain !",
    },
    ("post_generation", "es"): {
        "post": "¡Pan recién hecho todos los domingos desde las siete! Nuestros panaderos amasan la masa a mano "
                "y la hornean en horno de piedra para que tu desayuno sepa a casa.",
        "hashtags": ["#panaderia", "#panfresco", "#desayunodomingo"],
        "call_to_action": "¡Ven a probar nuestro pan de masa madre!",
    },
    ("post_generation", "pt"): {
        "post": "Pão fresquinho todos os domingos a partir das sete horas! Os nossos padeiros amassam a massa "
                "à mão e cozem-na em forno de pedra para que o seu pequeno-almoço tenha sabor de casa.",
        "hashtags": ["#padaria", "#paofresco", "#pequenoalmoco"],
        "call_to_action": "Venha provar o nosso pão de fermentação natural!",
    },
    # ---- hashtags -----------------------------------------------------------------------------
    ("hashtags", "de"): {
        "primary": ["#Yoga", "#YogaKurs"], "secondary": ["#Entspannung", "#Achtsamkeit"],
        "trending": ["#SelfCare"], "niche": ["#YogaBerlinMitte"],
        "strategy": "Beginne mit den Kernbegriffen und ergänze lokale Nischen-Hashtags, um Menschen in deiner Nähe zu erreichen.",
    },
    ("hashtags", "en"): {
        "primary": ["#yoga", "#yogaclass"], "secondary": ["#mindfulness", "#wellness"],
        "trending": ["#selfcare"], "niche": ["#yogabrooklyn"],
        "strategy": "Lead with the core topic and add local niche tags so that people nearby find your classes.",
    },
    ("hashtags", "fr"): {
        "primary": ["#yoga", "#coursdeyoga"], "secondary": ["#bienetre", "#pleineconscience"],
        "trending": ["#selfcare"], "niche": ["#yogalyon"],
        "strategy": "Commencez par les mots-clés principaux, puis ajoutez des hashtags locaux pour toucher les personnes de votre quartier.",
    },
    ("hashtags", "es"): {
        "primary": ["#yoga", "#clasesdeyoga"], "secondary": ["#bienestar", "#mindfulness"],
        "trending": ["#autocuidado"], "niche": ["#yogamadrid"],
        "strategy": "Empieza con los términos principales y añade etiquetas locales de nicho para llegar a la gente de tu barrio.",
    },
    ("hashtags", "pt"): {
        "primary": ["#yoga", "#aulasdeyoga"], "secondary": ["#bemestar", "#atencaoplena"],
        "trending": ["#autocuidado"], "niche": ["#yogalisboa"],
        "strategy": "Comece pelos termos principais e acrescente hashtags locais de nicho para chegar às pessoas do seu bairro.",
    },
    # ---- ab_variations ------------------------------------------------------------------------
    ("ab_variations", "de"): {
        "variations": [
            {"label": "A", "post": "Nur diese Woche: 20 % Rabatt auf alle Yogakurse. Sichere dir jetzt deinen Platz!", "angle": "Rabatt und Dringlichkeit"},
            {"label": "B", "post": "Mehr Ruhe im Alltag: Unsere Yogakurse helfen dir, nach der Arbeit abzuschalten.", "angle": "Nutzen und Gefühl"},
        ],
        "test_hypothesis": "Wir testen, ob ein konkreter Rabatt mehr Anmeldungen bringt als ein emotionaler Nutzen.",
    },
    ("ab_variations", "en"): {
        "variations": [
            {"label": "A", "post": "This week only: 20% off every yoga class. Book your spot now!", "angle": "discount and urgency"},
            {"label": "B", "post": "Find calm after work: our evening yoga classes help you switch off and sleep better.", "angle": "benefit and feeling"},
        ],
        "test_hypothesis": "We test whether a concrete discount brings more sign-ups than an emotional benefit.",
    },
    ("ab_variations", "fr"): {
        "variations": [
            {"label": "A", "post": "Cette semaine seulement : 20 % de réduction sur tous les cours de yoga. Réservez votre place !", "angle": "réduction et urgence"},
            {"label": "B", "post": "Retrouvez le calme après le travail : nos cours du soir vous aident à décrocher et à mieux dormir.", "angle": "bénéfice et émotion"},
        ],
        "test_hypothesis": "Nous testons si une réduction concrète apporte plus d'inscriptions qu'un bénéfice émotionnel.",
    },
    ("ab_variations", "es"): {
        "variations": [
            {"label": "A", "post": "Solo esta semana: 20 % de descuento en todas las clases de yoga. ¡Reserva tu plaza ahora!", "angle": "descuento y urgencia"},
            {"label": "B", "post": "Encuentra la calma después del trabajo: nuestras clases de la tarde te ayudan a desconectar y dormir mejor.", "angle": "beneficio y emoción"},
        ],
        "test_hypothesis": "Probamos si un descuento concreto consigue más inscripciones que un beneficio emocional.",
    },
    ("ab_variations", "pt"): {
        "variations": [
            {"label": "A", "post": "Só esta semana: 20% de desconto em todas as aulas de yoga. Reserve já o seu lugar!", "angle": "desconto e urgência"},
            {"label": "B", "post": "Encontre a calma depois do trabalho: as nossas aulas ao fim do dia ajudam-no a desligar e a dormir melhor.", "angle": "benefício e emoção"},
        ],
        "test_hypothesis": "Testamos se um desconto concreto traz mais inscrições do que um benefício emocional.",
    },
    # ---- sentiment ----------------------------------------------------------------------------
    ("sentiment", "de"): {
        "sentiment": "negative", "score": -0.7, "key_phrases": ["zwei Wochen gewartet", "keine Antwort"],
        "summary": "Der Kunde ist verärgert, weil seine Bestellung seit zwei Wochen nicht angekommen ist.",
        "suggested_reply": "Das tut uns sehr leid! Schreib uns bitte deine Bestellnummer, wir kümmern uns sofort darum.",
    },
    ("sentiment", "en"): {
        "sentiment": "negative", "score": -0.7, "key_phrases": ["waited two weeks", "no answer"],
        "summary": "The customer is upset because the order has not arrived after two weeks.",
        "suggested_reply": "We are so sorry! Please send us your order number and we will look into it right away.",
    },
    ("sentiment", "fr"): {
        "sentiment": "negative", "score": -0.7, "key_phrases": ["attendu deux semaines", "aucune réponse"],
        "summary": "Le client est mécontent parce que sa commande n'est toujours pas arrivée après deux semaines.",
        "suggested_reply": "Nous sommes vraiment désolés ! Envoyez-nous votre numéro de commande et nous nous en occupons tout de suite.",
    },
    ("sentiment", "es"): {
        "sentiment": "negative", "score": -0.7, "key_phrases": ["esperado dos semanas", "ninguna respuesta"],
        "summary": "El cliente está molesto porque su pedido no ha llegado después de dos semanas.",
        "suggested_reply": "¡Lo sentimos mucho! Envíanos tu número de pedido y lo revisamos de inmediato.",
    },
    ("sentiment", "pt"): {
        "sentiment": "negative", "score": -0.7, "key_phrases": ["esperei duas semanas", "nenhuma resposta"],
        "summary": "O cliente está aborrecido porque a encomenda ainda não chegou depois de duas semanas.",
        "suggested_reply": "Lamentamos imenso! Envie-nos o número da encomenda e vamos tratar disso imediatamente.",
    },
    # ---- posting_times ------------------------------------------------------------------------
    ("posting_times", "de"): {
        "timezone": "Europe/Berlin",
        "recommendations": [
            {"day": "tuesday", "time": "07:30", "reason": "Viele Berufstätige scrollen auf dem Weg zur Arbeit durch ihren Feed."},
            {"day": "thursday", "time": "19:00", "reason": "Am Abend haben Eltern mehr Zeit und reagieren häufiger auf Beiträge."},
        ],
    },
    ("posting_times", "en"): {
        "timezone": "America/New_York",
        "recommendations": [
            {"day": "tuesday", "time": "07:30", "reason": "Many commuters scroll through their feed on the way to work."},
            {"day": "thursday", "time": "19:00", "reason": "In the evening parents have more time and react to posts more often."},
        ],
    },
    ("posting_times", "fr"): {
        "timezone": "Europe/Paris",
        "recommendations": [
            {"day": "tuesday", "time": "07:30", "reason": "Beaucoup de personnes consultent leur fil d'actualité dans les transports le matin."},
            {"day": "thursday", "time": "19:00", "reason": "Le soir, les parents ont plus de temps et réagissent plus souvent aux publications."},
        ],
    },
    ("posting_times", "es"): {
        "timezone": "Europe/Madrid",
        "recommendations": [
            {"day": "tuesday", "time": "08:00", "reason": "Mucha gente revisa las redes sociales de camino al trabajo por la mañana."},
            {"day": "thursday", "time": "21:00", "reason": "Por la noche los padres tienen más tiempo y reaccionan más a las publicaciones."},
        ],
    },
    ("posting_times", "pt"): {
        "timezone": "Europe/Lisbon",
        "recommendations": [
            {"day": "tuesday", "time": "08:00", "reason": "Muitas pessoas consultam as redes sociais a caminho do trabalho de manhã."},
            {"day": "thursday", "time": "21:00", "reason": "À noite os pais têm mais tempo e reagem com mais frequência às publicações."},
        ],
    },
    # ---- brand_voice --------------------------------------------------------------------------
    ("brand_voice", "de"): {
        "adapted_post": "Hey Kaffeefreunde! Unsere neuen Bohnen aus Kolumbien sind da und duften nach Schokolade und Kirsche. Schaut vorbei!",
        "voice_traits": ["locker", "herzlich"],
        "changes": ["Eine persönliche Anrede am Anfang ergänzt.", "Die Geschmacksnoten lebendiger beschrieben."],
    },
    ("brand_voice", "en"): {
        "adapted_post": "Hey coffee friends! Our new beans from Colombia just landed and they smell like chocolate and cherry. Come say hi!",
        "voice_traits": ["casual", "warm"],
        "changes": ["Added a personal greeting at the start.", "Described the tasting notes more vividly."],
    },
    ("brand_voice", "fr"): {
        "adapted_post": "Salut les amateurs de café ! Nos nouveaux grains de Colombie viennent d'arriver et sentent le chocolat et la cerise. Passez nous voir !",
        "voice_traits": ["décontracté", "chaleureux"],
        "changes": ["Ajout d'une salutation personnelle au début.", "Description plus vivante des notes de dégustation."],
    },
    ("brand_voice", "es"): {
        "adapted_post": "¡Hola, amantes del café! Nuestros nuevos granos de Colombia acaban de llegar y huelen a chocolate y cereza. ¡Pásate a probarlos!",
        "voice_traits": ["cercano", "cálido"],
        "changes": ["Añadí un saludo personal al principio.", "Describí las notas de sabor de forma más viva."],
    },
    ("brand_voice", "pt"): {
        "adapted_post": "Olá, amantes de café! Os nossos novos grãos da Colômbia acabaram de chegar e cheiram a chocolate e cereja. Venham experimentar!",
        "voice_traits": ["descontraído", "caloroso"],
        "changes": ["Acrescentei uma saudação pessoal no início.", "Descrevi as notas de sabor de forma mais viva."],
    },
}


PROMPTS: dict[tuple[str, str], str] = {
    # The request each answer in GOOD answers: it gives the answer's facts and numbers, and the
    # answer neither repeats it nor adds numbers of its own.
    ("post_generation", "de"): "Schreib bitte einen Instagram-Post auf Deutsch für unsere Bäckerei. Stichwörter: "
                               "frisches Brot sonntags ab sieben, Teig von Hand geknetet, Steinofen, Sauerteigbrot.",
    ("post_generation", "en"): "Please write an Instagram post in English for our bakery. Keywords: fresh bread on "
                               "Sundays from seven, dough kneaded by hand, stone oven, sourdough loaf.",
    ("post_generation", "fr"): "Écris un post Instagram en français pour notre boulangerie. Mots-clés : pain frais le "
                               "dimanche dès sept heures, pâte pétrie à la main, four à pierre, pain au levain.",
    ("post_generation", "es"): "Escribe un post de Instagram en español para nuestra panadería. Palabras clave: pan "
                               "recién hecho los domingos desde las siete, masa amasada a mano, horno de piedra, masa madre.",
    ("post_generation", "pt"): "Escreva um post para o Instagram em português para a nossa padaria. Palavras-chave: "
                               "pão fresco aos domingos a partir das sete, massa amassada à mão, forno de pedra, fermentação natural.",
    ("hashtags", "de"): "Welche Hashtags passen auf Instagram zu unserem Yogastudio in Berlin-Mitte? Bitte auf Deutsch.",
    ("hashtags", "en"): "Which Instagram hashtags should our yoga studio in Brooklyn use? Answer in English.",
    ("hashtags", "fr"): "Quels hashtags Instagram pour notre studio de yoga à Lyon ? Réponse en français.",
    ("hashtags", "es"): "¿Qué hashtags de Instagram nos recomiendas para nuestro estudio de yoga en Madrid? En español.",
    ("hashtags", "pt"): "Que hashtags do Instagram sugere para o nosso estúdio de yoga em Lisboa? Em português.",
    ("ab_variations", "de"): "Zwei Varianten für einen A/B-Test auf Instagram, auf Deutsch: Unser Yogastudio gibt "
                             "nur diese Woche 20 % Rabatt auf alle Kurse, und Yoga hilft, nach der Arbeit abzuschalten.",
    ("ab_variations", "en"): "Two Instagram variations for an A/B test, in English: our yoga studio gives 20% off "
                             "every class this week only, and evening yoga helps people sleep better.",
    ("ab_variations", "fr"): "Deux variantes Instagram pour un test A/B, en français : notre studio de yoga offre "
                             "20 % sur tous les cours cette semaine, et le yoga du soir aide à mieux dormir.",
    ("ab_variations", "es"): "Dos variantes de Instagram para un test A/B, en español: nuestro estudio de yoga da un "
                             "20 % de descuento en todas las clases esta semana, y el yoga ayuda a dormir mejor.",
    ("ab_variations", "pt"): "Duas variações para o Instagram num teste A/B, em português: o nosso estúdio de yoga dá "
                             "20% de desconto em todas as aulas esta semana, e o yoga ajuda a dormir melhor.",
    ("sentiment", "de"): "Wie ist die Stimmung dieses Instagram-Kommentars? Antwort bitte auf Deutsch.\n\n"
                         "„Seit zwei Wochen warte ich auf meine Bestellung und bekomme keine Antwort. Echt ärgerlich.“",
    ("sentiment", "en"): "What is the sentiment of this Instagram comment? Answer in English.\n\n"
                         "\"Waited two weeks for my order and got no answer at all. Really annoying.\"",
    ("sentiment", "fr"): "Quel est le sentiment de ce commentaire Instagram ? Réponse en français.\n\n"
                         "« J'ai attendu deux semaines ma commande et aucune réponse. Vraiment agaçant. »",
    ("sentiment", "es"): "¿Qué sentimiento tiene este comentario de Instagram? Contesta en español.\n\n"
                         "«He esperado dos semanas mi pedido y ninguna respuesta. Qué molesto.»",
    ("sentiment", "pt"): "Qual é o sentimento deste comentário no Instagram? Responda em português.\n\n"
                         "\"Esperei duas semanas pela encomenda e nenhuma resposta. Que chatice.\"",
    ("posting_times", "de"): "Wann sollten wir auf Instagram posten? Wir sind ein Spielwarenladen in Berlin "
                             "(Europe/Berlin), uns folgen Eltern und Pendler. Bitte auf Deutsch.",
    ("posting_times", "en"): "When should we post on Instagram? We're a toy shop in New York (America/New_York) "
                             "followed by parents and commuters. Answer in English.",
    ("posting_times", "fr"): "Quand publier sur Instagram ? Nous sommes un magasin de jouets à Paris (Europe/Paris), "
                             "suivi par des parents et des navetteurs. Réponse en français.",
    ("posting_times", "es"): "¿Cuándo publicamos en Instagram? Somos una juguetería en Madrid (Europe/Madrid) y nos "
                             "siguen padres que trabajan. Contesta en español.",
    ("posting_times", "pt"): "Quando devemos publicar no Instagram? Somos uma loja de brinquedos em Lisboa "
                             "(Europe/Lisbon), seguida por pais que trabalham. Em português.",
    ("brand_voice", "de"): "Unsere Rösterei ist locker und herzlich. Schreib diesen Instagram-Post in unserem Stil um, "
                           "auf Deutsch:\n\n„Neue Kaffeebohnen aus Kolumbien eingetroffen. Aroma: Schokolade, Kirsche.“",
    ("brand_voice", "en"): "Our roastery sounds casual and warm. Rewrite this Instagram post in our voice, in "
                           "English:\n\n\"New coffee beans from Colombia have arrived. Notes: chocolate, cherry.\"",
    ("brand_voice", "fr"): "Notre torréfaction a un ton décontracté et chaleureux. Réécris ce post Instagram, en "
                           "français :\n\n« Arrivage de nouveaux grains de café de Colombie. Notes : chocolat, cerise. »",
    ("brand_voice", "es"): "Nuestra tostaduría es cercana y cálida. Reescribe este post de Instagram, en español:"
                           "\n\n«Llegada de nuevos granos de café de Colombia. Notas: chocolate, cereza.»",
    ("brand_voice", "pt"): "A nossa torrefação é descontraída e calorosa. Reescreva este post do Instagram, em "
                           "português:\n\n\"Chegaram novos grãos de café da Colômbia. Notas: chocolate, cereja.\"",
}

PLATFORM = "instagram"


def case_prompt(task: str, language: str) -> str:
    return PROMPTS[(task, language)]


def case_row(task: str, language: str, **extra) -> dict:
    return {"id": f"{task}-{language}", "task": task, "language": language, "platform": PLATFORM,
            "prompt": case_prompt(task, language), **extra}


def write_cases(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@dataclass
class CaseSet:
    """A case file and the good answer to each of its prompts."""

    path: Path
    answers: dict[str, str]
    """prompt → answer text (JSON)."""

    def answer(self, messages: list[dict]) -> str:
        return self.answers[messages[-1]["content"]]


@pytest.fixture
def eval_cases(tmp_path) -> CaseSet:
    """30 cases (6 tasks × 5 languages) in ``tmp_path/cases.jsonl``, with their good answers."""
    rows = [case_row(task, lang) for task, lang in GOOD]
    answers = {case_prompt(task, lang): json.dumps(answer, ensure_ascii=False) for (task, lang), answer in GOOD.items()}
    return CaseSet(write_cases(tmp_path / "cases.jsonl", rows), answers)
