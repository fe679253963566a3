"""Built-in prose questions for `sdsat make-data --sources builtin:questions`.

The stdlib prompts teach the SATs code; a chat user also asks questions answered in prose, where
nothing in the context predicts the answer's words and prompt lookup finds nothing: the drafts there
are the SATs' alone. So the self-distilled data gets the model's own answers to general questions.

Built in code (no data set ships here), topic x template. Never the benchmark's `norepeat` questions
(`sdsat_vllm/bench.py`): no topic and no template is shared with them (tests check both), so a
benchmark on norepeat measures questions the drafter never saw. The held-out split goes by topic
(`split_key`): held-out questions are about topics that no training question is about.
"""

from __future__ import annotations

import random

#: the source name that selects these questions in `MakeDataConfig.sources`
BUILTIN_QUESTIONS = "builtin:questions"
BUILTIN_QUESTIONS_2 = "builtin:questions-2"
#: a question for a model without a chat template (make-data's rows, the norepeat benchmark's prompts)
QUESTION_FRAME = "Question: {}\nAnswer:"

QUESTION_TOPICS = (
    # nature and science
    "black holes", "DNA", "the greenhouse effect", "magnetism", "the speed of light", "atoms", "bacteria",
    "evolution", "the ozone layer", "hurricanes", "deserts", "the ocean floor", "fossils", "the human brain",
    "lightning", "snowflakes", "the periodic table", "friction", "sound waves", "the northern lights",
    "comets", "Mars", "the sun", "clouds", "wind energy", "nuclear power", "static electricity", "rust",
    "fermentation", "the food chain", "wetlands", "caves", "tsunamis", "the digestive system", "muscles",
    "blood types", "the sense of smell", "dinosaurs", "whales", "ants", "octopuses", "trees in autumn",
    "mushrooms", "the nitrogen cycle", "climate change", "batteries", "magnets in a motor", "lenses",
    # history and society
    "ancient Egypt", "the Industrial Revolution", "the Silk Road", "the Renaissance", "the Olympic Games",
    "the invention of writing", "the Great Wall of China", "the Vikings", "the French Revolution",
    "the space race", "ancient Greek philosophy", "the first airplanes", "castles", "the Maya civilization",
    "trade unions", "the United Nations", "taxes", "a constitution", "elections", "libraries", "museums",
    "public transport", "the postal service", "banks", "insurance", "supply and demand", "unemployment",
    "exchange rates", "small businesses", "advertising", "cities", "farming", "fishing", "the railway",
    # everyday life and technology
    "cooking pasta", "baking bread", "coffee", "tea", "chocolate", "a balanced diet", "exercise", "stress",
    "learning a new language", "reading books", "writing a letter", "saving money", "a job interview",
    "public speaking", "friendship", "time management", "gardening", "keeping a pet dog", "cats",
    "riding a bicycle", "swimming", "chess", "music lessons", "painting", "photography", "movies",
    "video games", "smartphones", "passwords", "email", "search engines", "cloud storage", "3D printing",
    "robots", "artificial intelligence", "satellites", "GPS", "solar panels", "refrigerators",
    "microwave ovens", "airplanes", "bridges", "skyscrapers", "plumbing", "electric grids", "maps",
)

#: a second set (`builtin:questions-2`, session 25): 128 more topics with the same templates, for more of
#: the served model's own prose (SAT training rows, larger datastores; data/README.md)
QUESTION_TOPICS_2 = (
    # nature and science
    "quantum computers", "the Big Bang", "neutron stars", "the Milky Way", "asteroids", "Jupiter",
    "Saturn's rings", "the International Space Station", "cells and their parts", "viruses", "antibiotics",
    "the skeleton", "the lungs", "the kidneys", "hormones", "allergies", "genetics", "stem cells",
    "chemical reactions", "acids and bases", "radio waves", "microscopes", "lasers", "thermometers",
    "weather forecasts", "rivers", "mountains", "the Arctic", "Antarctica", "jungles", "grasslands",
    "spiders", "butterflies", "frogs", "sharks", "elephants", "penguins", "wolves", "horses", "owls",
    "earthworms", "pollination", "seeds", "cactus plants", "soil", "water pollution", "air quality",
    "endangered species",
    # history and society
    "the Aztecs", "the Inca Empire", "the Middle Ages", "knights", "the Ottoman Empire",
    "the American Revolution", "the Cold War", "the Berlin Wall", "the telephone", "the light bulb",
    "the steam engine", "the history of medicine", "pirates", "the Titanic", "the first Moon landing",
    "coins and banknotes", "credit cards", "mortgages", "retirement savings", "the minimum wage", "globalization",
    "tourism", "volunteering", "human rights", "courts of law", "firefighters", "hospitals", "schools",
    "universities", "newspapers", "television",
    # everyday life and technology
    "making soup", "grilling vegetables", "rice", "cheese", "vitamins", "drinking water", "yoga",
    "running a marathon", "hiking", "camping", "board games", "knitting", "woodworking",
    "playing the guitar", "singing in a choir", "dancing", "poetry", "comic books", "podcasts",
    "social media", "online shopping", "computer viruses", "spreadsheets", "programming languages",
    "databases", "web browsers", "wifi", "bluetooth", "electric scooters", "trains", "ships", "rockets",
    "drones", "virtual reality", "washing machines", "vacuum cleaners", "air conditioning",
    "houseplants", "composting", "moving to a new city", "planning a trip", "packing a suitcase",
    "weddings", "parenting", "teamwork", "negotiation", "leadership", "habits", "creativity",
)

QUESTION_TEMPLATES = (
    "Can you give me a short introduction to {}?",
    "How would you explain {} to a friend who knows nothing about it?",
    "What should a beginner know about {}?",
    "Write a short paragraph about {}.",
    "What are the pros and cons of {}?",
    "Tell me three interesting things about {}.",
    "How have ideas about {} changed over time?",
    "What questions do people often ask about {}, and what are the answers?",
    "Summarize what {} is in plain language.",
    "Why do people find {} interesting?",
)


#: the built-in question sets by source name (`MakeDataConfig.sources`)
QUESTION_SETS = {BUILTIN_QUESTIONS: QUESTION_TOPICS, BUILTIN_QUESTIONS_2: QUESTION_TOPICS_2}


def builtin_questions(seed: int = 0, source: str = BUILTIN_QUESTIONS) -> list[tuple[str, str]]:
    """Every (question, topic) pair of a set's topics and the templates, in a seeded order."""
    if source not in QUESTION_SETS:
        raise ValueError(f"no built-in question set {source!r}; there are {sorted(QUESTION_SETS)}")
    pairs = [(t.format(topic), topic) for topic in QUESTION_SETS[source] for t in QUESTION_TEMPLATES]
    # the first set's order is the one its shipped data was made in
    random.Random(f"{seed}:questions" if source == BUILTIN_QUESTIONS else f"{seed}:{source}").shuffle(pairs)
    return pairs
