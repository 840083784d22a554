# frozen_string_literal: true

module MegaMutex
  # The gem's version.
  VERSION = "1.0.0"
end
