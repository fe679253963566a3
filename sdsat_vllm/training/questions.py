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


def builtin_questions(seed: int = 0) -> list[tuple[str, str]]:
    """Every (question, topic) pair of the topics and templates, in a seeded order."""
    pairs = [(t.format(topic), topic) for topic in QUESTION_TOPICS for t in QUESTION_TEMPLATES]
    random.Random(f"{seed}:questions").shuffle(pairs)
    return pairs
