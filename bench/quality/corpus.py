"""The words the generator builds conversations from: written for it, so nothing is downloaded.

RULER's passkey haystack repeats five sentences; the varied filler is a small corpus of everyday statements that do
not mention numbers, names, colours, fruit, cities or sports, so none of them can answer a question by accident.
"""

from __future__ import annotations

RULER_HAYSTACK = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)

FILLER = (
    "The morning train was late again because of work on the tracks.",
    "A good loaf of bread needs time more than it needs skill.",
    "The library on the corner closes early on weekends.",
    "Most of the garden was planted in the spring.",
    "The old bridge is being painted before the winter comes.",
    "Walking to work takes longer, but it clears the head.",
    "The meeting ran over, so lunch was eaten at the desk.",
    "Rain is expected for most of the week ahead.",
    "The new cafe serves soup that tastes like home.",
    "Someone left an umbrella on the bus this morning.",
    "The museum added a room of maps from the last century.",
    "Learning to sail is mostly learning to wait for the wind.",
    "The neighbours are building a fence along the lane.",
    "A quiet evening with a book is hard to beat.",
    "The market sells fresh fish on most mornings.",
    "The hills behind the town are full of walking paths.",
    "The printer in the office jams whenever it is needed.",
    "A cup of tea tastes better after a long walk.",
    "The school play was rehearsed in the hall all week.",
    "Traffic on the main road was slow because of a parade.",
    "The river rose after the storms but did not flood.",
    "Fixing the roof took the whole weekend.",
    "The bakery runs out of rolls before noon.",
    "The cinema is showing an old film about the sea.",
    "The path through the woods is muddy after the rain.",
    "The orchestra practised the slow movement twice.",
    "Packing for a trip always takes longer than planned.",
    "The cat sleeps on the warm windowsill every afternoon.",
    "The village fair has a contest for the largest pumpkin.",
    "The lecture was about how cities grew along rivers.",
    "A new bicycle lane was opened near the station.",
    "The soup needed more salt and a little pepper.",
    "The kitchen window looks out over the allotments.",
    "The hotel breakfast was simple but generous.",
    "The ferry crossing was calm for once.",
    "The choir sang in the church on the hill.",
    "The football match was stopped because of the fog.",
    "An old friend wrote a letter after many years.",
    "The shop on the high street sells handmade candles.",
    "The dog waits by the door when it hears the car.",
    "The evening class teaches the basics of pottery.",
    "The harbour is busiest early in the morning.",
    "The shelves in the hallway are full of old magazines.",
    "The wind blew the leaves across the yard all night.",
    "Cooking for a crowd is easier with a plan.",
    "The chess club meets in the back room of the pub.",
    "The power went out for an hour during the storm.",
    "The allotment produced more beans than anyone could eat.",
    "The tram line was extended to the hospital.",
    "A walk along the beach is best when the tide is out.",
    "The report was finished late but nobody minded.",
    "The concert hall has excellent sound from the balcony.",
    "The farmer sells eggs from a box at the gate.",
    "The mountain road is closed when it snows.",
    "The painters left drops of white on the stairs.",
    "The town hall clock has been slow for a month.",
    "A long bath is the best end to a cold day.",
    "The children built a den out of blankets and chairs.",
    "The lighthouse is open to visitors in the summer.",
    "The train to the coast is quicker than the car.",
)

# Scripted assistant replies to a distracting turn: short, and about nothing the question asks.
ACKNOWLEDGEMENTS = (
    "Thanks for telling me.",
    "That sounds nice.",
    "I see, that makes sense.",
    "Interesting, thank you.",
    "Got it.",
    "Noted, thanks.",
    "That is good to hear.",
    "Understood.",
)

# Things a multi-fact conversation states about people, and the values they take.
PEOPLE = ("Anna", "Ben", "Clara", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas")
ATTRIBUTES = {
    "favourite fruit": ("apple", "banana", "cherry", "mango", "pear", "plum", "grape", "lemon"),
    "home city": ("Paris", "Madrid", "Oslo", "Vienna", "Lisbon", "Prague", "Dublin", "Athens"),
    "favourite colour": ("red", "purple", "orange", "silver", "brown", "pink", "grey", "gold"),
    "favourite sport": ("tennis", "rugby", "hockey", "cycling", "rowing", "golf", "skiing", "boxing"),
}
# A thing whose value a later turn changes.
UPDATABLE = ("locker code", "parking spot number", "desk number", "gate number", "room number", "table number")
