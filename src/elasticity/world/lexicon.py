"""The embedded world's words and sentence templates (data only; `grammar.py` turns them into PCFGs).

Every list is written in rank order: `grammar.py` gives the r-th item a Zipf-Mandelbrot (Pareto) mass
proportional to (r + b)^-a, so the first items are common and the tail is rare. Templates are strings of
space-separated surface tokens; `$name` is a slot filled from the list of that name (genre-, sentiment- or
intensity-specific lists are looked up with the document's latent values). Punctuation is its own token.

The positive and negative sentiment lexicons are disjoint, and neutral text uses neither, so the words that
carry sentiment are exactly the words that only one review component can emit.
"""

from __future__ import annotations

# ---- movie reviews: latent genre (the topic) -------------------------------------------------------
GENRES = ("drama", "comedy", "horror", "thriller", "romance", "western")

GENRE_WORD = {  # singular, plural
    "drama": ("drama", "dramas"),
    "comedy": ("comedy", "comedies"),
    "horror": ("horror film", "horror films"),
    "thriller": ("thriller", "thrillers"),
    "romance": ("romance", "romances"),
    "western": ("western", "westerns"),
}

TITLES = {
    "drama": ("The Long Winter", "A Quiet Life", "Our Father's House", "The Last Letter", "Small Hours"),
    "comedy": ("The Wedding Plan", "My Crazy Uncle", "The Wrong Bus", "Party Animals", "Big Trouble at Home"),
    "horror": ("The Silent House", "The Cellar", "Night of the Crows", "Dark Water", "The Hollow"),
    "thriller": ("The Last Witness", "Cold Trail", "The Double Cross", "Blind Corner", "The Informant"),
    "romance": ("Summer in Paris", "Second Chances", "The Blue Dress", "Letters to Anna", "Falling Slowly"),
    "western": ("The Last Ride", "Dust and Iron", "The Lonely Trail", "Red River Gold", "High Noon Road"),
}

PLOTS = {
    "drama": ("a family who lose their farm", "an old teacher and his son", "a young nurse in a small town"),
    "comedy": ("two brothers who open a bakery", "a man who forgets his own wedding", "a dog who runs for mayor"),
    "horror": ("a family who move into an old house", "a group of friends lost in the woods",
               "a girl who hears voices at night"),
    "thriller": ("a detective who hunts a killer", "a reporter who finds a secret file", "a woman on the run"),
    "romance": ("two strangers who meet on a train", "a singer who falls for a painter",
                "old friends who fall in love"),
    "western": ("a sheriff who defends a small town", "two brothers on a long ride west",
                "a farmer who fights a gang"),
}
PLOT_FRAMES = ("It is about $plot .", "It follows $plot .", "The story follows $plot .")

# ---- the review opening: shared by both sentiments, so it says nothing about the sentiment ------------
VIEWINGS = (
    "I watched $title last $when with my $companion .",
    "Last $when I saw $title at the $venue .",
    "My $companion and I went to see $title .",
    "$title is a $genre by $director .",
    "I finally saw $title on $medium .",
    "We rented $title , a $genre from $period .",
)
WHEN = ("night", "week", "weekend", "Friday", "Sunday")
COMPANION = ("sister", "brother", "wife", "husband", "friends", "parents", "kids", "mother")
VENUE = ("cinema", "theater", "film festival")
MEDIUM = ("TV", "a plane", "DVD", "my laptop")
PERIOD = ("last year", "the nineties", "the seventies")
DIRECTOR = ("Anna Berg", "Paul Marsh", "Lena Ortiz", "Tom Reed", "Mia Stone", "Sam Cole")

# ---- the review body: sentiment s in {positive, negative}, intensity i in {strong, mild} ---------------
VERDICTS = {
    ("positive", "strong"): ("I loved it .", "I loved every minute of it .", "What a great film !",
                             "This is one of the best films of the year .", "It was a real treat ."),
    ("positive", "mild"): ("I liked it .", "I enjoyed it .", "It was better than I expected .",
                           "It was a nice surprise .", "It was fun to watch ."),
    ("negative", "strong"): ("I hated it .", "I hated every minute of it .", "What a waste of time !",
                             "This is one of the worst films of the year .", "It was a real mess ."),
    ("negative", "mild"): ("I did not like it much .", "It did not work for me .", "It was worse than I expected .",
                           "It was a bit of a letdown .", "It was hard to sit through ."),
}

ADJECTIVES = {
    ("positive", "strong"): ("brilliant", "wonderful", "superb", "amazing", "excellent", "stunning", "perfect",
                             "outstanding"),
    ("positive", "mild"): ("good", "nice", "decent", "solid", "pleasant", "enjoyable", "charming", "fine"),
    ("negative", "strong"): ("awful", "terrible", "dreadful", "horrible", "painful", "pathetic", "laughable",
                             "unbearable"),
    ("negative", "mild"): ("weak", "dull", "flat", "bland", "forgettable", "messy", "uneven", "clumsy"),
}
ADVERBS = {"strong": ("really", "truly", "simply"), "mild": ("quite", "fairly", "pretty")}

# Aspect slots, in the order a review visits them; each is present with its probability (SLOT_PROB) and
# lists its noun phrases in rank order. The verb agrees with the phrase: was / were (PLURAL).
GENERAL_SLOTS = {
    "acting": ("acting", "cast", "lead actor"),
    "story": ("story", "plot", "script"),
    "music": ("music", "soundtrack"),
    "ending": ("ending", "final scene"),
}
GENRE_SLOTS = {  # genre: (first genre slot, second genre slot)
    "drama": (("characters", "young actors"), ("dialogue", "family scenes")),
    "comedy": (("jokes", "gags"), ("humor", "comic timing")),
    "horror": (("scares", "jump scares"), ("monster", "ghost")),
    "thriller": (("twists", "chase scenes"), ("suspense", "villain")),
    "romance": (("love story", "romance"), ("two leads", "kisses")),
    "western": (("shootouts", "horse chases"), ("landscapes", "costumes")),
}
PLURAL = frozenset({"characters", "young actors", "family scenes", "jokes", "gags", "scares", "jump scares",
                    "twists", "chase scenes", "two leads", "kisses", "shootouts", "horse chases", "landscapes",
                    "costumes"})
SLOT_ORDER = ("genre1", "acting", "story", "genre2", "music", "ending")
SLOT_PROB = {"genre1": 0.5, "acting": 0.45, "story": 0.35, "genre2": 0.3, "music": 0.2, "ending": 0.3}

ASPECT_TEMPLATES = (
    "The $aspect $be $adj .",
    "The $aspect $be $adj and $adj2 .",
    "I thought the $aspect $be $adj .",
    "The $aspect $be $adverb $adj .",
)

# Closing: an optional recommendation, then the rating, which always ends the review.
RECOMMEND = {
    "positive": ("I would recommend it to anyone who likes $genres .", "Go and see it .", "See it if you can .",
                 "I will watch it again ."),
    "negative": ("I would not recommend it to anyone .", "Skip this one .", "Save your money .",
                 "I will not watch it again ."),
}
RECOMMEND_PROB = 0.5
RATINGS = {  # the number words of each (sentiment, intensity); ratings 1-5 are negative, 6-10 positive
    ("positive", "strong"): ("nine", "ten"),
    ("positive", "mild"): ("seven", "eight", "six"),
    ("negative", "mild"): ("four", "three", "five"),
    ("negative", "strong"): ("one", "two"),
}
RATING_TEMPLATES = ("I give it $n out of ten .", "$N out of ten from me .", "My rating : $n out of ten .")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# The words that carry sentiment: each can be emitted by one review component only (a test checks this).
POSITIVE_CUES = frozenset(ADJECTIVES[("positive", "strong")] + ADJECTIVES[("positive", "mild")]) | {
    "loved", "great", "best", "treat", "liked", "enjoyed", "better", "fun"}
NEGATIVE_CUES = frozenset(ADJECTIVES[("negative", "strong")] + ADJECTIVES[("negative", "mild")]) | {
    "hated", "waste", "worst", "mess", "not", "worse", "letdown", "hard"}

PLOT_PROB = 0.5
STRONG_PROB = 0.5

# ---- neutral text: short factual pieces on everyday topics ----------------------------------------
TOWNS = ("Millbrook", "Ashford", "Kingsley", "Redhill", "Westport")
TOPICS = ("town", "weather", "recipe", "train", "film", "garden")

NEUTRAL = {
    # topic: (intro templates, [(optional sentence templates, probability)], closing templates or ())
    "town": (
        ("$TOWN is a small town by the $water .", "$TOWN is an old town in the $region ."),
        [
            (("It has a $building and a $building2 .", "There is a $building near the $water ."), 0.7),
            (("On $days the market sells $food and $food2 .", "The market is open on $days ."), 0.6),
            (("About $thousands people live there .",), 0.5),
            (("The $building was built $hundreds years ago .",), 0.4),
        ],
        ("Life in $TOWN is quiet .", "Many visitors come to $TOWN in the summer ."),
    ),
    "weather": (
        ("In $month the weather in $town is $weather .", "$month is often $weather in the $region ."),
        [
            (("The days are $length and the nights are $temp .",), 0.8),
            (("It often rains in the $daytime .", "It rarely snows in the $daytime ."), 0.6),
            (("Farmers watch the sky before they plant their $crop .",), 0.4),
            (("In the $daytime the streets are quiet .", "In the $daytime a cold wind blows from the $water ."), 0.4),
        ],
        ("Take a coat if you go out .", "The weather can change quickly in $month ."),
    ),
    "recipe": (
        ("This is a simple recipe for $dish .", "Here is how to make $dish at home ."),
        [
            (("You will need $food and $food2 .",), 0.8),
            (("First cut the $vegetable into small pieces .", "First wash the $vegetable in cold water ."), 0.7),
            (("Cook it over a low heat for $minutes minutes .", "Bake it for $minutes minutes ."), 0.7),
            (("Add a little salt and $spice .",), 0.5),
        ],
        ("Serve it with bread .", "Serve it hot .", "It keeps for two days in a cool place ."),
    ),
    "train": (
        ("The train from $town to $town2 leaves every $interval .",),
        [
            (("The trip takes about $minutes minutes .",), 0.7),
            (("It stops at $few small stations on the way .",), 0.5),
            (("Tickets can be bought at the station or on the train .",), 0.4),
            (("The first train leaves at $hour in the morning .",), 0.5),
        ],
        ("Bikes are allowed on the train .", "Dogs may travel on the train ."),
    ),
    "film": (  # film facts: titles and genres like the reviews, but no opinion
        ("$title came out in $period .", "The film $title came out in $period ."),
        [
            (("It is a $genre .",), 0.7),
            (("It runs for about $minutes minutes .",), 0.5),
            (("It was directed by $director .",), 0.6),
            (("It was shot in $town in $few weeks .",), 0.4),
        ],
        ("It was shown on TV in $period .", "It is still shown in some cinemas ."),
    ),
    "garden": (
        ("Our garden has $plant and $plant2 .", "In the garden we grow $plant and $plant2 ."),
        [
            (("We water them in the $daytime .",), 0.6),
            (("The $plant grow well in $month .",), 0.5),
            (("Birds come to eat the seeds .", "Bees visit the flowers in the $daytime ."), 0.5),
        ],
        ("We share the $plant with our neighbors .",),
    ),
}
NEUTRAL_CLOSING_PROB = 0.5

NEUTRAL_WORDS = {
    "water": ("river", "sea", "lake"),
    "region": ("north", "hills", "valley"),
    "building": ("market", "church", "school", "library", "bakery", "harbor"),
    "days": ("Saturdays", "Mondays", "Fridays", "Sundays"),
    "food": ("bread", "fish", "cheese", "apples", "eggs", "onions", "potatoes", "rice"),
    "thousands": ("two thousand", "five thousand", "ten thousand", "twenty thousand"),
    "hundreds": ("two hundred", "three hundred", "four hundred"),
    "month": ("January", "April", "July", "October", "March", "May"),
    "weather": ("cold", "wet", "warm", "windy", "dry", "mild"),
    "length": ("short", "long"),
    "temp": ("cool", "cold", "warm"),
    "daytime": ("morning", "afternoon", "evening"),
    "crop": ("corn", "beans", "wheat"),
    "dish": ("bean soup", "apple cake", "fish stew", "rice with peas", "onion tart"),
    "vegetable": ("onions", "carrots", "potatoes", "beans"),
    "minutes": ("twenty", "thirty", "forty", "ten", "ninety"),
    "spice": ("pepper", "some herbs", "a pinch of sugar"),
    "town": TOWNS,
    "interval": ("hour", "half hour", "two hours"),
    "few": ("three", "four", "five", "six"),
    "hour": ("six", "five", "seven"),
    "plant": ("roses", "tomatoes", "beans", "tulips", "carrots", "herbs"),
}
