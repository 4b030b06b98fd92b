"""Write the demo chat dataset (deterministic). Run: python examples/make_demo_data.py examples/data/demo.jsonl"""

import json
import random
import sys

WORDS = ["apple", "river", "stone", "cloud", "garden", "silver", "window", "forest", "candle", "rocket",
         "pencil", "violet", "harbor", "meadow", "falcon", "copper", "thunder", "lantern", "orchid", "canyon",
         "marble", "glacier", "ember", "willow", "comet", "saddle", "puzzle", "velvet", "anchor", "breeze"]
COLOURS = {"banana": "yellow", "grass": "green", "sky": "blue", "snow": "white", "coal": "black",
           "tomato": "red", "carrot": "orange", "plum": "purple"}


def make_examples(rng: random.Random) -> list[dict]:
    """One chat example per task instance, shuffled."""
    examples = []
    for word in WORDS:
        examples.append((f"Reverse the word: {word}", word[::-1]))
        examples.append((f"Uppercase the word: {word}", word.upper()))
        examples.append((f"How many letters are in {word}?", str(len(word))))
        examples.append((f"What is the first letter of {word}?", word[0]))
        examples.append((f"What is the last letter of {word}?", word[-1]))
    for _ in range(40):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        examples.append((f"What is {a} plus {b}?", str(a + b)))
    for thing, colour in COLOURS.items():
        examples.append((f"What colour is {thing}?", f"The {thing} is {colour}."))
    rng.shuffle(examples)
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in examples]


def main(path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for example in make_examples(random.Random(0)):
            out.write(json.dumps(example) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
