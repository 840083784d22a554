# frozen_string_literal: true

require "uri"

module MegaMutex
  # The :mysql backend's settings (MariaDB/MySQL named locks, GET_LOCK; the
  # store is ext/mega_mutex/store_mariadb.c, see docs/mysql.md).
  #
  # @example
  #   MegaMutex.configure do |config|
  #     config.backend = :mysql
  #     config.mysql_url = "mysql://locks:secret@db1:3306"             # TCP
  #     config.mysql_url = "mysql://locks@localhost/?socket=/run/mysqld/mysqld.sock"
  #   end
  class Configuration
    # Schemes {#mysql_url=} accepts (the ones Rails' DATABASE_URL uses too).
    MYSQL_SCHEMES = %w[mysql mysql2 mariadb trilogy].freeze
    # MariaDB's default port.
    MYSQL_DEFAULT_PORT = 3306

    # Where the :mysql backend connects: host, port, socket, username,
    # password, database (nil when not given). The password never shows in
    # inspect or to_s.
    # @api private
    MysqlSettings = Struct.new(:host, :port, :socket, :username, :password, :database, keyword_init: true) do
      # @return [String] "host:port" or the socket path, for messages
      def where
        socket || "#{host || 'localhost'}:#{port || MYSQL_DEFAULT_PORT}"
      end

      # @return [String] the settings, without the password
      def inspect
        "#<MysqlSettings #{username || '(default user)'}@#{where}#{database ? "/#{database}" : ''}" \
          "#{password ? ' password=[FILTERED]' : ''}>"
      end
      alias_method :to_s, :inspect
    end

    store_settings :mysql, defaults: :mysql_defaults, validate: :validate_mysql, client: :mysql_client, session: true

    # @return [String, nil] the URL set with {#mysql_url=} (or taken from
    #   ENV["MEGA_MUTEX_MYSQL_URL"]), with its password shown as "[FILTERED]"
    attr_reader :mysql_url

    # The MariaDB/MySQL server the :mysql backend keeps its locks on, as a
    # URL: `mysql://user:password@host:3306/database`, or
    # `mysql://user:password@localhost/?socket=/path/to/mysqld.sock`. The
    # database is optional (named locks need none); user and password may
    # be percent-encoded. Defaults to ENV["MEGA_MUTEX_MYSQL_URL"]. MegaMutex
    # opens its own connections to it (never the application's).
    # @param value [String, nil] nil: from the environment, or (in Rails) ActiveRecord's settings
    # @raise [ArgumentError] naming what is wrong (the password is never shown)
    def mysql_url=(value)
      if value.nil?
        @mysql_url = nil
        @mysql_settings = nil
        return
      end
      raise ArgumentError, "mysql_url must be a String like mysql://user:password@host:3306/database (got #{value.class})" unless value.is_a?(String)

      settings = self.class.parse_mysql_url(value)
      @mysql_settings = settings
      @mysql_url = self.class.filter_mysql_url(value).freeze
    end

    # The server as database.yml-style settings, for code that has them as a
    # Hash (the Railtie, MySQLMutex's connection argument): :host, :port,
    # :socket, :username, :password, :database (String or Symbol keys;
    # others are ignored, as ActiveRecord's adapter, pool and the like).
    # @param value [Hash, nil]
    # @raise [ArgumentError] for a value that is not a Hash or a bad field
    def mysql_settings=(value)
      if value.nil?
        @mysql_settings = nil
        @mysql_url = nil
        return
      end

      settings = self.class.mysql_settings_from(value)
      @mysql_settings = settings
      @mysql_url = nil
    end

    # @api private
    # @return [MysqlSettings, nil] the server the :mysql backend uses
    def mysql_settings
      @mysql_settings
    end

    class << self
      # @api private
      # @param url [String]
      # @return [MysqlSettings]
      # @raise [ArgumentError]
      def parse_mysql_url(url)
        shown = filter_mysql_url(url)
        uri = begin
          URI.parse(url)
        rescue URI::InvalidURIError
          raise ArgumentError, "mysql_url is not a valid URL (got #{shown.inspect}); expected mysql://user:password@host:3306/database"
        end
        unless MYSQL_SCHEMES.include?(uri.scheme&.downcase)
          raise ArgumentError, "mysql_url must start with #{MYSQL_SCHEMES.map { |s| "#{s}://" }.join(', ')} (got #{shown.inspect})"
        end

        params = uri.query ? URI.decode_www_form(uri.query).to_h : {}
        unknown = params.keys - %w[socket]
        raise ArgumentError, "mysql_url: unknown parameter(s) #{unknown.join(', ')} (only socket=/path is understood; got #{shown.inspect})" unless unknown.empty?

        database = uri.path.to_s.sub(%r{\A/}, "")
        parts = {
          host: uri.host.to_s.empty? ? nil : uri.host.delete_prefix("[").delete_suffix("]"),
          port: uri.port,
          socket: params["socket"],
          username: uri.user && URI.decode_www_form_component(uri.user),
          password: uri.password && URI.decode_www_form_component(uri.password),
          database: database.empty? ? nil : URI.decode_www_form_component(database)
        }
        mysql_settings_from(**as_trilogy_reads(uri.scheme.downcase, parts), shown: shown)
      end

      # A trilogy:// URL reaches the server trilogy would (Rails' DATABASE_URL
      # for the application's own connections): "localhost" is TCP, a socket
      # wins over a host, neither is /tmp/mysql.sock - not libmariadb's
      # default socket, which may be another server's. Other schemes are
      # read as mysql2 and libmariadb read them ("localhost" is the socket).
      # @return [Hash] parts, as that adapter reads them
      def as_trilogy_reads(scheme, parts)
        return parts unless scheme == "trilogy"

        require "mega_mutex/active_record_database"
        ActiveRecordDatabase.settings(parts.merge(adapter: "trilogy"))
      end
      private :as_trilogy_reads

      # @api private
      # @return [String] url with its password replaced by [FILTERED]
      def filter_mysql_url(url)
        url.sub(%r{\A([a-zA-Z][a-zA-Z0-9+.-]*://[^:@/]*:)[^@/]*@}) { "#{Regexp.last_match(1)}[FILTERED]@" }
      end

      # @api private
      # @param hash [Hash] :host, :port, :socket, :username (or :user), :password, :database
      # @return [MysqlSettings]
      # @raise [ArgumentError]
      def mysql_settings_from(hash)
        raise ArgumentError, "MySQL settings must be a Hash (got #{hash.class})" unless hash.is_a?(Hash)

        h = hash.transform_keys(&:to_s)
        shown = h.delete("shown")
        where = shown ? " in #{shown.inspect}" : ""
        text = lambda do |field, max|
          v = h[field]
          next nil if v.nil? || v == ""

          v = v.to_s if v.is_a?(Symbol)
          raise ArgumentError, "MySQL #{field} must be a String#{where} (got #{v.class})" unless v.is_a?(String)
          if v.include?("\0") || v.bytesize > max
            raise ArgumentError, "MySQL #{field} must be at most #{max} bytes without NUL#{where}"
          end

          v.dup.freeze
        end
        port = h["port"]
        port = Integer(port, exception: false) || port if port.is_a?(String)
        unless port.nil? || (port.is_a?(Integer) && port.between?(1, 65_535))
          raise ArgumentError, "MySQL port must be 1 to 65535#{where} (got #{port.inspect})"
        end

        socket = text.call("socket", MAX_SOCKET_PATH)
        raise ArgumentError, "MySQL socket must be an absolute path#{where} (got #{socket.inspect})" if socket && !socket.start_with?("/")

        MysqlSettings.new(host: text.call("host", MAX_HOST), port: port, socket: socket,
                          username: text.call("username", 256) || text.call("user", 256),
                          password: text.call("password", 1024), database: text.call("database", 256)).freeze
      end
    end

    private

    def mysql_defaults
      @mysql_url = nil
      @mysql_settings = nil
    end

    # The backend is :mysql: a server must be known (set, or in the environment).
    def validate_mysql
      return if @mysql_settings

      env = ENV.fetch("MEGA_MUTEX_MYSQL_URL", nil)
      unless env.nil? || env.empty?
        self.mysql_url = env
        return
      end
      raise ArgumentError, "backend :mysql needs config.mysql_url (e.g. mysql://user:password@host:3306) " \
                           "or ENV[\"MEGA_MUTEX_MYSQL_URL\"]"
    end

    # @return [Native::Client] a new session's client (it connects at its first request)
    def mysql_client
      s = @mysql_settings
      Native::Client.mysql(s.host, s.port, s.socket, s.username, s.password, s.database,
                           (connect_timeout * 1000).ceil, (io_timeout * 1000).ceil, lock_ttl)
    end
  end
end
