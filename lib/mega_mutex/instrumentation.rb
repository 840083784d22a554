# frozen_string_literal: true

module MegaMutex
  # Publishes an ActiveSupport::Notifications event for each step of a
  # lock's life, when ActiveSupport::Notifications is loaded and something
  # subscribes to that event. Whether it is loaded is checked at event time,
  # so loading ActiveSupport after MegaMutex works too; without it nothing is
  # required, loaded or allocated.
  #
  # | event                | payload                                  |
  # |----------------------|------------------------------------------|
  # | `acquire.mega_mutex` | `id`, `key`, `wait` (s), `attempts`      |
  # | `release.mega_mutex` | `id`, `key`, `held` (s), `lost`          |
  # | `timeout.mega_mutex` | `id`, `key`, `timeout` (s), `holder`     |
  # | `lost.mega_mutex`    | `id`, `key`, `reason`                    |
  #
  # Events are published once the step is over (the event's own duration is
  # about zero); the payload carries the times measured by MegaMutex. An
  # exception raised by a subscriber is logged (config.logger, else
  # warn) and never interrupts the lock's bookkeeping.
  #
  # @example
  #   ActiveSupport::Notifications.subscribe("acquire.mega_mutex") do |event|
  #     StatsD.histogram("lock.wait", event.payload[:wait])
  #   end
  module Instrumentation
    # Published when a lock is taken (not for a reentrant, nested take).
    ACQUIRE = "acquire.mega_mutex"
    # Published when the outermost holder gives a lock back.
    RELEASE = "release.mega_mutex"
    # Published when {Lock#lock} (or with_distributed_mutex) gives up waiting
    # and raises {TimeoutError}.
    TIMEOUT = "timeout.mega_mutex"
    # Published when a held lock's lease is found gone or taken over; may
    # come from the renewer thread.
    LOST = "lost.mega_mutex"
    # Every event MegaMutex publishes.
    EVENTS = [ACQUIRE, RELEASE, TIMEOUT, LOST].freeze

    class << self
      # Cheap check, meant to guard the building of a payload: true only when
      # ActiveSupport::Notifications is loaded and a subscriber listens to `name`.
      # @param name [String] one of {EVENTS}
      # @return [Boolean]
      def listening?(name)
        # Not `defined?(::ActiveSupport::Notifications)`: Ruby evaluates a
        # nested constant in defined? under a rescue that returns nil, which
        # swallowed a Thread#raise or Timeout landing there (the memory
        # backend's interrupt storm lost one in about ten runs).
        return false unless Object.const_defined?(:ActiveSupport, false) &&
                            ::ActiveSupport.const_defined?(:Notifications, false)

        ::ActiveSupport::Notifications.notifier.listening?(name)
      end

      # Publishes `name` with `payload` through ActiveSupport::Notifications.
      # Call only after {listening?} returned true. A subscriber's exception
      # is logged, not raised.
      # @param name [String] one of {EVENTS}
      # @param payload [Hash]
      # @param logger [#error, nil] where a subscriber's exception is reported
      # @return [void]
      def instrument(name, payload, logger = nil)
        # Interrupts wait while subscribers run (see Lock::LOGGING), so that
        # a Thread#raise or Timeout is never taken for a subscriber's error.
        Thread.handle_interrupt(Lock::LOGGING) do
          ::ActiveSupport::Notifications.instrument(name, payload)
          nil
        rescue StandardError => e
          message = "MegaMutex: a subscriber to #{name} raised #{e.class}: #{e.message}"
          begin
            logger ? logger.error(message) : warn(message)
          rescue StandardError
            nil
          end
          nil
        end
      end
    end
  end
end
