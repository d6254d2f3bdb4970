// The Swift client; see issue 4.
